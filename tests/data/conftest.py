import pytest

from tests.data import corpus as corpus_lib


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(directory, {id: Record}) of the small three-kind corpus, built once per test process."""
    d = tmp_path_factory.mktemp("corpus")
    return str(d), corpus_lib.build(str(d))
