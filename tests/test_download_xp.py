"""scripts/download_xp.py against a recorded archive answer (no network)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# The recorded archive answer: the DataLink CSV layout of GaiaXPy's sample file in ../shared
# (not copied into the repository).
XP_RESPONSE = ROOT.parent / "shared" / "data" / "real_xp" / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv"
IDS = [5853498713190525696, 5762406957886626816]


def _load_script():
    spec = importlib.util.spec_from_file_location("download_xp", ROOT / "scripts" / "download_xp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dl = _load_script()


class FakeClient:
    """Answers from the recorded files; fails ``fail_first`` times before answering."""

    def __init__(self, fail_first: int = 0):
        if not XP_RESPONSE.is_file():
            pytest.skip(f"recorded XP answer {XP_RESPONSE} not found (needs ../shared)")
        self.xp = Table.read(XP_RESPONSE, format="ascii.csv", fast_reader=False)
        self.astro = Table.read(DATA / "gaia_astrometry_response.csv", format="ascii.csv")
        self.calls: list[list[int]] = []
        self.fail_left = fail_first

    def xp_table(self, ids):
        self.calls.append([int(i) for i in ids])
        if self.fail_left:
            self.fail_left -= 1
            raise ConnectionError("recorded timeout")
        return self.xp[np.isin(np.asarray(self.xp["source_id"]), np.asarray(ids))]

    def astrometry_table(self, ids):
        return self.astro[np.isin(np.asarray(self.astro["source_id"]), np.asarray(ids))]


def test_download_batches_cache_and_missing(tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# sources\n" + "\n".join(str(i) for i in IDS + [42, IDS[0]]) + "\n")
    ids = dl.read_source_ids(ids_file)
    assert ids.tolist() == IDS + [42]
    client = FakeClient()
    out = tmp_path / "xp.csv"
    res = dl.download_xp(ids, out, client=client, batch=2, sleep=lambda s: None)
    assert res["rows"] == 2 and res["missing"] == 1 and res["batches"] == 2
    assert [len(c) for c in client.calls] == [2, 1]
    assert (tmp_path / "xp.csv.missing.txt").read_text().split() == ["42"]
    t = Table.read(out, format="ascii.csv", fast_reader=False)
    assert t["source_id"].tolist() == IDS
    assert t["parallax"][0] == pytest.approx(768.07) and np.isnan(t["parallax"][1])
    # a rerun reuses the cached batches: no archive call
    client2 = FakeClient()
    dl.download_xp(ids, out, client=client2, batch=2, sleep=lambda s: None)
    assert client2.calls == []


def test_output_is_readable_by_the_xp_reader(tmp_path):
    archive = pytest.importorskip("cvae_pms.xp.archive")
    out = tmp_path / "xp.csv"
    dl.download_xp(np.array(IDS), out, client=FakeClient(), batch=5000, sleep=lambda s: None)
    batch = archive.read_xp(out)
    assert batch.source_id.tolist() == IDS
    assert batch.ok.all()
    ref = archive.read_xp(XP_RESPONSE)
    np.testing.assert_allclose(batch.bp_coefficients, ref.bp_coefficients, rtol=1e-12)
    np.testing.assert_allclose(batch.rp_covariance, ref.rp_covariance, rtol=1e-12)


def test_retries_with_backoff_then_gives_up(tmp_path):
    waits: list[float] = []
    res = dl.download_xp(np.array(IDS), tmp_path / "a.csv", client=FakeClient(fail_first=2),
                         retries=3, backoff_s=1.5, sleep=waits.append)
    assert res["rows"] == 2 and waits == [1.5, 3.0]
    with pytest.raises(dl.DownloadError, match="failed after 3 attempts"):
        dl.download_xp(np.array(IDS), tmp_path / "b.csv", client=FakeClient(fail_first=5),
                       retries=2, backoff_s=1.0, sleep=waits.append)
    assert not (tmp_path / "b.csv").exists()


def test_bad_inputs(tmp_path):
    bad = tmp_path / "ids.txt"
    bad.write_text("123\nnot-an-id\n")
    with pytest.raises(dl.DownloadError, match="line 2"):
        dl.read_source_ids(bad)
    with pytest.raises(dl.DownloadError, match="does not exist"):
        dl.download_xp(np.array(IDS), tmp_path / "nodir" / "x.csv", client=FakeClient())
    with pytest.raises(dl.DownloadError, match="no source_id|none of the"):
        dl.download_xp(np.array([1, 2]), tmp_path / "c.csv", client=FakeClient(),
                       sleep=lambda s: None)
