"""One queue for everyone: concurrent clients, arrival order, model switches between jobs, queue listing
and cancelling, and answers while the worker is busy. Against a real uvicorn server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.conftest import SMALL, ContextFactory, serve
from webui.context import AppContext
from webui.engine.jobs import Job

TIMEOUT = 60


def _hold_worker(ctx: AppContext) -> threading.Event:
    """Occupy the worker with a job that waits for the returned event."""
    gate = threading.Event()
    started = threading.Event()

    def wait() -> None:
        started.set()
        gate.wait(TIMEOUT)

    ctx.submit("gate", wait)
    assert started.wait(10)
    return gate


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _waiting(ctx: AppContext) -> list[dict]:
    return [row for row in ctx.queue.snapshot() if row["position"] > 0]


def test_sixteen_concurrent_clients_complete_in_arrival_order(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    submitted: list[Job] = []
    finished: list[str] = []

    def listen(job: Job) -> None:
        if job.kind != "txt2img" or not job.payload.prompt.startswith("client "):
            return
        if job not in submitted:
            submitted.append(job)
        if job.done and job.id not in finished:
            finished.append(job.id)

    ctx.queue.add_listener(listen)
    with serve(ctx) as server, httpx.Client(timeout=TIMEOUT) as http:
        http.post(f"{server.url}/txt2img", json={"prompt": "warm up", **SMALL, "steps": 1})
        gate = _hold_worker(ctx)

        def call(i: int) -> dict:
            body = {"prompt": f"client {i}", "seed": 1000 + i, **SMALL, "steps": 1}
            return http.post(f"{server.url}/txt2img", json=body).json()

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(call, i) for i in range(16)]
            _wait_until(lambda: len(_waiting(ctx)) == 16, "16 waiting jobs")
            # the API answers while the worker is busy and 16 jobs wait
            progress = http.get(f"{server.url}/progress", timeout=5).json()
            assert progress["state"]["job"] == "gate"
            assert http.get(f"{server.url}/options", timeout=5).status_code == 200
            queue = http.get(f"{server.url}/queue", timeout=5).json()
            assert (queue["running"], queue["waiting"]) == (1, 16)
            assert [job["position"] for job in queue["jobs"]] == list(range(17))
            gate.set()
            answers = [f.result(TIMEOUT) for f in futures]

    prompts_in_arrival_order = [job.payload.prompt for job in submitted]
    assert sorted(prompts_in_arrival_order) == sorted(f"client {i}" for i in range(16))
    assert finished == [job.id for job in submitted]  # served first come, first served
    for i, answer in enumerate(answers):
        info = json.loads(answer["info"])
        assert info["all_prompts"] == [f"client {i}"]  # nobody got someone else's result
        assert info["all_seeds"] == [1000 + i]
        assert len(answer["images"]) == 1


def test_model_switch_waits_for_the_jobs_queued_before_it(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    with serve(ctx) as server, httpx.Client(timeout=TIMEOUT) as http:
        assert http.post(f"{server.url}/options", json={"sd_model_checkpoint": "tiny_a"}).status_code == 200
        gate = _hold_worker(ctx)
        with ThreadPoolExecutor(3) as pool:
            before = pool.submit(http.post, f"{server.url}/txt2img", json={"prompt": "before", **SMALL})
            _wait_until(lambda: len(_waiting(ctx)) == 1, "the first job")
            switch = pool.submit(http.post, f"{server.url}/options", json={"sd_model_checkpoint": "tiny_b"})
            _wait_until(lambda: len(_waiting(ctx)) == 2, "the switch job")
            after = pool.submit(http.post, f"{server.url}/txt2img", json={"prompt": "after", **SMALL})
            _wait_until(lambda: len(_waiting(ctx)) == 3, "the last job")
            assert [row["kind"] for row in _waiting(ctx)] == ["txt2img", "model-switch", "txt2img"]
            assert ctx.models.current.checkpoint.name == "tiny_a.safetensors"  # nothing switched yet
            gate.set()
            assert switch.result(TIMEOUT).status_code == 200
            assert json.loads(before.result(TIMEOUT).json()["info"])["sd_model_name"] == "tiny_a"
            assert json.loads(after.result(TIMEOUT).json()["info"])["sd_model_name"] == "tiny_b"
        assert (
            http.get(f"{server.url}/options").json()["sd_model_checkpoint"].startswith("tiny_b.safetensors")
        )


def test_cancel_a_waiting_job_by_its_task_id(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    with serve(ctx) as server, httpx.Client(timeout=TIMEOUT) as http:
        gate = _hold_worker(ctx)
        with ThreadPoolExecutor(2) as pool:
            keep = pool.submit(
                http.post,
                f"{server.url}/txt2img",
                json={"prompt": "keep", "force_task_id": "keep-1", **SMALL},
            )
            _wait_until(lambda: len(_waiting(ctx)) == 1, "the first job")
            drop = pool.submit(
                http.post,
                f"{server.url}/txt2img",
                json={"prompt": "drop", "force_task_id": "drop-1", **SMALL},
            )
            _wait_until(lambda: len(_waiting(ctx)) == 2, "the second job")
            rows = http.get(f"{server.url}/queue").json()["jobs"]
            assert [(r["id"], r["position"]) for r in rows[1:]] == [("keep-1", 1), ("drop-1", 2)]
            r = http.delete(f"{server.url}/queue/drop-1")
            assert r.status_code == 200 and r.json() == {"id": "drop-1", "status": "cancelled"}
            assert [r["id"] for r in http.get(f"{server.url}/queue").json()["jobs"][1:]] == ["keep-1"]
            dup = http.post(
                f"{server.url}/txt2img", json={"prompt": "again", "force_task_id": "keep-1", **SMALL}
            )
            assert dup.status_code == 422 and dup.json()["detail"][0]["loc"] == ["body", "force_task_id"]
            gate.set()
            dropped = drop.result(TIMEOUT)
            assert dropped.status_code == 409 and "cancelled" in dropped.json()["errors"]
            assert json.loads(keep.result(TIMEOUT).json()["info"])["all_prompts"] == ["keep"]
        again = http.delete(f"{server.url}/queue/keep-1")
        assert again.status_code == 409 and "finished" in again.json()["errors"]
