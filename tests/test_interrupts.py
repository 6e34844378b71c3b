"""Long work stopped half-way (a Streamlit rerun or Stop): lock and hooks released, next run normal.

Streamlit interrupts a script by raising ``StopException``/``RerunException`` (BaseException
subclasses) from the next ``st`` call, i.e. from inside a progress callback; a generator left
behind by a rerun is closed. vizkit cannot import those classes, so the tests raise their own
Exception and BaseException subclasses from ``progress`` and close/throw into the generator.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_concurrency import assert_no_hooks, assert_same_state, module_state

from support import fingerprint, method_cases, random_image
from vizkit.data.textures import landscape
from vizkit.methods.style import extractors
from vizkit.methods.style import transfer as vs
from vizkit.models.registry import load_model


class RerunLike(Exception):
    """An ordinary exception raised mid-run."""


class StopLike(BaseException):
    """Like Streamlit's ScriptControlException: not an Exception, so ``except Exception`` misses it."""


@pytest.fixture(scope="module")
def fashion_random():
    torch.manual_seed(0)
    return load_model("fashion-zf", device="cpu", weights=None)


def lock_is_free(lock) -> bool:
    """Whether another thread can take ``lock`` at once (no waiting)."""
    got: list[bool] = []

    def take():
        ok = lock.acquire(blocking=False)
        got.append(ok)
        if ok:
            lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join(timeout=10)
    return got == [True]


def raise_on_call(n: int, error: type[BaseException]):
    """A progress callback that raises ``error`` on its ``n``-th call."""
    calls = {"n": 0}

    def progress(done, total):
        calls["n"] += 1
        if calls["n"] == n:
            raise error(f"interrupted at {done}/{total}")
        return True

    return progress, calls


# Every long-running registered method (it reports progress and takes a batch size), in small
# batches so that a run has several progress calls to interrupt.
JOBS = {case.id: lambda m, progress, case=case: case.call(m, random_image(64, 64, 5), 3, batch_size=2,
                                                           progress=progress)
        for case in method_cases() if case.spec.long_running}


_NORMAL: dict[str, object] = {}
_NORMAL_CALLS: dict[str, int] = {}


@pytest.mark.parametrize("error", [RerunLike, StopLike, KeyboardInterrupt])
@pytest.mark.parametrize("job", list(JOBS))
def test_interrupted_job_releases_lock_and_hooks_and_next_run_is_normal(fashion_random, job, error):
    m = fashion_random
    before = module_state(m.module)
    if job not in _NORMAL:
        counted, normal_calls = raise_on_call(0, error)  # never raises: counts the progress calls
        _NORMAL[job] = fingerprint(JOBS[job](m, counted))
        _NORMAL_CALLS[job] = normal_calls["n"]
    progress, calls = raise_on_call(2, error)
    with pytest.raises(error, match="interrupted"):
        JOBS[job](m, progress)
    # It really stopped half-way, on the second batch/step of more.
    assert calls["n"] == 2 < _NORMAL_CALLS[job]
    assert lock_is_free(m.lock)
    assert_no_hooks(m.module)
    assert_same_state(before, module_state(m.module))
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert fingerprint(JOBS[job](m, None)) == _NORMAL[job]


@pytest.fixture(scope="module")
def multiscale():
    return extractors.get_extractor("random-multiscale", "cpu")


def _style_run(extractor):
    return vs.style_transfer(landscape(32), random_image(32, 32, 8), extractor=extractor, steps=6,
                             size=32, preview_every=1)


def _extractor_clean(extractor) -> None:
    assert_no_hooks(extractor.module)
    assert not extractor.module.training
    assert not any(p.requires_grad or p.grad is not None for p in extractor.module.parameters())
    assert lock_is_free(extractors._EXTRACTOR_LOCK)


@pytest.mark.parametrize("how", ["close", "throw-stop", "stop-callback-raises"])
def test_interrupted_style_transfer_leaves_extractor_clean(multiscale, how):
    normal = vs.run_to_end(_style_run(multiscale))
    if how == "stop-callback-raises":
        def stop():
            raise StopLike("interrupted")

        with pytest.raises(StopLike):
            vs.run_to_end(vs.style_transfer(landscape(32), random_image(32, 32, 8),
                                            extractor=multiscale, steps=6, size=32, stop=stop))
    else:
        run = _style_run(multiscale)
        first, second = next(run), next(run)
        assert (first.step, second.step) == (1, 2) and not second.done
        if how == "close":
            run.close()  # what happens to a generator a rerun leaves behind
        else:
            with pytest.raises(StopLike):
                run.throw(StopLike("interrupted"))
        with pytest.raises(StopIteration):
            next(run)
    _extractor_clean(multiscale)
    again = vs.run_to_end(_style_run(multiscale))
    np.testing.assert_array_equal(again.image, normal.image)
    assert again.losses == normal.losses
