"""Files NumPy reads as .npz archives (they start with 'PK') but that are damaged: each loader names the
file in its own error, never a zipfile.BadZipFile traceback."""

import pytest


def test_a_file_that_only_looks_like_a_zip_is_an_error_naming_it(tmp_path):
    """NumPy reads a file starting with 'PK' as an .npz archive: a damaged one raises
    zipfile.BadZipFile, which each loader turns into its own error naming the file."""
    from pathlib import Path

    from genrec.errors import CheckpointError, DataFormatError
    from genrec.item_embeddings import load_item_embeddings
    from genrec.recommender_files import load_embeddings, load_sequences

    bad = tmp_path / "x.npy"
    bad.write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "x.ids.txt").write_text("a\nb\n")
    with pytest.raises(DataFormatError, match="x.npy: not a .npy array"):
        load_item_embeddings(bad, ["a", "b"], ids_path=tmp_path / "x.ids.txt")
    zipped = tmp_path / "train_sequences.npz"
    zipped.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="train_sequences.npz: cannot read the training sequences"):
        load_sequences(zipped, 10)
    with pytest.raises(CheckpointError, match="x.npy"):
        load_embeddings(Path(bad), 2)
