import pytest

from tests.integration.slurm_cluster import missing_binaries, start_cluster


@pytest.fixture(scope="session")
def slurm():
    """A one-node slurm cluster on this machine for the session (see slurm_cluster.py); skips
    only where slurm is not installed (CI installs it: .ci/install_slurm.sh)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"slurm is not installed (no {', '.join(missing)}): .ci/install_slurm.sh installs it")
    cluster = start_cluster()
    yield cluster
    cluster.stop()
