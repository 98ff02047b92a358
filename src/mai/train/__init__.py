"""Training stage: loop.py (the loop), batches.py (data order), optim.py (AdamW and LR schedule), checkpoint.py."""
