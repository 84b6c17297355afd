"""Table conditioning (reaemb_ray/conditioning.py) against its definitions."""
import numpy as np
import pytest

from reaemb_ray import conditioning


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    # anisotropic like pooled LM embeddings: a big shared offset plus a few strong directions
    return 40.0 + rng.normal(size=(200, 10)) @ np.diag([9, 5, 3, 1, 1, .5, .2, .1, .1, .1]) @ rng.normal(size=(10, 10))


def test_center_and_standardize(table):
    c, rec = conditioning.apply(table, ["center"])
    assert np.allclose(c.mean(0), 0, atol=1e-4) and rec == {"steps": ["center"], "dim": 10, "input_dim": 10}
    z, _ = conditioning.apply(table, ["standardize"])
    assert np.allclose(z.std(0), 1, atol=1e-4)


def test_whiten_gives_identity_covariance_and_keeps_the_top_directions(table):
    z, rec = conditioning.apply(table, ["whiten"], dim=4)
    assert z.shape == (200, 4) and rec["dim"] == 4
    assert np.allclose(z.T @ z / len(z), np.eye(4), atol=1e-4)
    p, _ = conditioning.apply(table, ["pca"], dim=4)
    xc = table - table.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert np.allclose(np.abs(p), np.abs(xc @ vt[:4].T), atol=1e-3)  # up to the sign convention
    assert np.allclose(p.std(0), s[:4] / np.sqrt(200), rtol=1e-3)


def test_l2_and_anisotropy(table):
    assert conditioning.mean_pairwise_cosine(table) > 0.9  # the shared offset dominates
    centred, _ = conditioning.apply(table, ["center", "l2"])
    assert np.allclose(np.linalg.norm(centred, axis=1), 1, atol=1e-5)
    assert abs(conditioning.mean_pairwise_cosine(centred)) < 0.05


def test_bad_steps_are_named():
    with pytest.raises(KeyError, match="whitening"):
        conditioning.apply(np.ones((3, 2)), ["whitening"])
    with pytest.raises(ValueError, match="reducing step"):
        conditioning.apply(np.ones((3, 2)), ["center"], dim=2)
    with pytest.raises(ValueError, match="at most one"):
        conditioning.apply(np.ones((3, 2)), ["pca", "whiten"])
