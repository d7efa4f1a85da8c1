"""The reference data shipped in tests/data are the files the official code produced."""
import hashlib

from conftest import REPO_ROOT

DATA = REPO_ROOT / 'tests' / 'data' / 'reference'


def test_reference_files_match_their_checksums():
    lines = (DATA / 'SHA256SUMS').read_text().split('\n')
    listed = {}
    for line in filter(None, lines):
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix('./')] = digest
    assert len(listed) >= 10
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
    on_disk = {p.relative_to(DATA).as_posix() for p in DATA.rglob('*') if p.is_file()}
    assert on_disk - {'SHA256SUMS'} == set(listed)


def test_reference_data_stays_within_its_stated_size():
    size = sum(p.stat().st_size for p in DATA.rglob('*') if p.is_file())
    assert size < 25 * 1024 ** 2  # tests/data/README.md
