"""An Estimator pickles as its configuration and is rebuilt where it is unpickled: a
multiprocessing worker or a Ray actor gets working models, not a copy of sessions."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from faceutils import ASTRONAUT

from agegender import Estimator


def _ages(estimator: Estimator, path: str) -> list[tuple[float, float, float]]:
    """Each face's age, its std and the gender's probability (plain floats cross processes)."""
    return [(f.age.value, f.age.std, f.gender.probability) for f in estimator.predict(path)]


def test_a_pickled_estimator_is_rebuilt_from_its_configuration(estimator: Estimator) -> None:
    derived = estimator.derive(min_face=40, age_thresholds=(18.0,))
    copy = pickle.loads(pickle.dumps(derived))
    assert copy.config == derived.config
    assert copy.config.min_face == 40
    assert copy is not derived and copy._shared is not derived._shared
    # its own models, giving the same estimates (float32: separate sessions)
    want, got = derived.predict(str(ASTRONAUT)), copy.predict(str(ASTRONAUT))
    assert len(got) == len(want) == 1
    np.testing.assert_allclose(got[0].age.value, want[0].age.value, atol=1e-3)
    np.testing.assert_allclose(got[0].age.std, want[0].age.std, atol=1e-3)
    assert list(got[0].age.p_at_least) == [18.0]
    np.testing.assert_allclose(got[0].age.p_at_least[18.0], want[0].age.p_at_least[18.0], atol=1e-4)
    assert got[0].gender.label == want[0].gender.label
    # the state is the configuration only: no session, thread or lock is pickled
    assert len(pickle.dumps(derived)) < 10_000


def test_an_estimator_passed_to_another_process_works_there(estimator: Estimator) -> None:
    want = _ages(estimator, str(ASTRONAUT))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, nothing inherited
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        got = pool.submit(_ages, estimator, str(ASTRONAUT)).result()
    assert len(got) == len(want) == 1
    np.testing.assert_allclose(got[0], want[0], atol=1e-3)
