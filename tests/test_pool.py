"""The worker pool: order, concurrency from several threads, errors, shutdown, streams."""

from __future__ import annotations

import threading
import traceback

import pytest
import torch

from headway.runtime.pool import StreamWorkerPool


def test_results_come_back_in_submission_order() -> None:
    with StreamWorkerPool(3) as pool:
        assert pool.map(lambda x: x * x, range(20)) == [x * x for x in range(20)]
        assert pool.run_all([lambda i=i: i + 1 for i in range(5)]) == [1, 2, 3, 4, 5]


def test_single_worker_is_first_in_first_out() -> None:
    seen: list[int] = []
    with StreamWorkerPool(1) as pool:
        futures = [pool.submit(seen.append, i) for i in range(30)]
        pool.gather(futures)
    assert seen == list(range(30))


def test_jobs_from_several_threads() -> None:
    totals: dict[int, int] = {}
    with StreamWorkerPool(4) as pool:

        def client(cid: int) -> None:
            totals[cid] = sum(pool.map(lambda x: x + cid, range(50)))

        threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert totals == {c: sum(range(50)) + 50 * c for c in range(6)}


def failing_head_job() -> None:
    raise ValueError("head 3 failed")


def test_exception_reaches_the_caller_with_its_traceback() -> None:
    with StreamWorkerPool(2) as pool:
        future = pool.submit(failing_head_job)
        with pytest.raises(ValueError, match="head 3 failed") as caught:
            future.result()
        frames = traceback.extract_tb(caught.value.__traceback__)
        assert any(f.name == "failing_head_job" for f in frames)
        # the pool keeps working after a failed job
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_shutdown_is_clean_and_idempotent() -> None:
    pool = StreamWorkerPool(2)
    futures = [pool.submit(lambda i=i: i) for i in range(10)]
    pool.shutdown()
    assert [f.result() for f in futures] == list(range(10))  # queued jobs finished
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(abs, 1)
    with pytest.raises(ValueError, match="at least one worker"):
        StreamWorkerPool(0)


def test_tensor_jobs_on_cpu() -> None:
    x = torch.randn(64, 64)
    with StreamWorkerPool(2) as pool:
        outs = pool.map(torch.mm, [x, x], [x, x.t()])
    torch.testing.assert_close(outs[1], x @ x.t())


@pytest.mark.cuda
def test_every_worker_owns_a_stream_and_results_are_synchronised() -> None:
    with StreamWorkerPool(3, "cuda") as pool:
        assert len({s.cuda_stream for s in pool.streams}) == 3
        x = torch.randn(512, 512, device="cuda")
        outs = pool.map(lambda a: (a @ a).sum(dim=0), [x] * 6)
        expected = (x @ x).sum(dim=0)
        for out in outs:
            torch.testing.assert_close(out, expected)
