from pathlib import Path
import pytest, os
from multiflow._atomic import atomic_path
def test_atomic_path(tmp_path):
    out = tmp_path / "a" / "x.npz"
    with atomic_path(out) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == out.parent
        tmp.write_bytes(b"1")
    assert out.read_bytes() == b"1"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"2"); raise RuntimeError("x")
    assert out.read_bytes() == b"1" and sorted(p.name for p in out.parent.iterdir()) == ["x.npz"]
