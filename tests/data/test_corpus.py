from mai.data.corpus import bible, python_stdlib, shakespeare


def test_offline_corpora_are_real_text():
    plays = dict(shakespeare())
    assert len(plays) >= 30 and "hamlet" in plays and "To be, or not to be" in plays["hamlet"]
    books = dict(bible())
    assert len(books) == 66 and books["Genesis"].startswith("In the beginning God created")
    modules = dict(python_stdlib())
    assert "json/decoder.py" in modules and "def " in modules["json/decoder.py"]
    assert not any(name.startswith("test/") for name in modules)
