"""The serving engine's KV cache: the model's KVCache plus the row moves continuous batching makes.

Running sequences occupy rows 0..n-1 of one cache allocated at start. A prompt prefilled alone is
copied into the next free row; prompts prefilled together write straight into theirs through a
view of those rows; a finished row is filled by moving the last running row into it.
"""

import copy

from mai.model.transformer import KVCache


class BatchCache(KVCache):
    def rows(self, start: int, end: int) -> KVCache:
        """Rows start..end-1 as a cache of their own sharing this one's memory (writes land here),
        whose span follows the positions written, as a prefill's should."""
        view = copy.copy(self)
        view.k, view.v = [k[start:end] for k in self.k], [v[start:end] for v in self.v]
        view.fixed_span = False
        return view

    def copy_row(self, row: int, source: KVCache, source_row: int, length: int) -> None:
        """Copy the first `length` positions of `source`'s row `source_row` into this cache's `row`, every layer."""
        for k, v, source_k, source_v in zip(self.k, self.v, source.k, source.v, strict=True):
            k[row, :, :length] = source_k[source_row, :, :length]
            v[row, :, :length] = source_v[source_row, :, :length]
