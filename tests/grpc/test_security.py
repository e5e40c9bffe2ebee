"""Security: Admin credentials, TLS and mTLS end to end, secrets kept out of logs and
metrics, request ids on every warning and error line, per-client rate limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from server.cli import serve_argv
from server.client import CocktailClient, merge_spec
from server.interceptors import RequestIdFilter
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.ratelimit import RateLimiter
from tests.fixtures.certs import Pki, make_pki
from tests.grpc.conftest import TOKEN, running_gateway
from tests.grpc.test_faults import FaultyEngine

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- credentials -----------------------------------------------------------------------
async def test_admin_credentials_matrix(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        wrong = [
            (),
            (("authorization", "Bearer "),),
            (("authorization", "Bearer wrong"),),
            (("authorization", f"Bearer {TOKEN[:-1]}"),),
            (("authorization", f"Bearer {TOKEN}{TOKEN}"),),
            (("authorization", TOKEN),),
            (("authorization", f"Basic {TOKEN}"),),
            (("x-admin-token", TOKEN),),
        ]
        for md in wrong:
            for call in (
                gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=md),
                gw.admin.EvictCaches(pb.EvictCachesRequest(), metadata=md),
                gw.admin.RegisterDelta(
                    pb.RegisterDeltaRequest(name="x", source_path="v0"), metadata=md
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == UNAUTH, md
        assert not (tmp_path / "store" / "x").exists()
        # Each service answers on its own port only, with or without the token.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.AdminStub(ch).ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.admin_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.GatewayStub(ch).Generate(
                    pb.GenerateRequest(prompt="x"), metadata=gw.auth
                )
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        ok = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert list(ok.deltas) == []


async def test_admin_without_credentials_configured_refuses_everyone(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources, admin_token_file=None) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert e.value.code() == UNAUTH and "no credentials configured" in e.value.details()


# -- TLS and mTLS ------------------------------------------------------------------------
def _creds(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def _code(coro: object) -> grpc.StatusCode:
    try:
        await coro  # type: ignore[misc]
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        return e.code()


async def test_tls_and_mtls_end_to_end(
    tmp_path: Path, tiny_llama: Path, sources: Path, pki: Pki
) -> None:
    tls = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "admin_client_ca_file": pki.client_ca,
    }
    async with running_gateway(tmp_path, tiny_llama, sources, **tls) as gw:
        gport, aport = gw.server.port, gw.server.admin_port
        req = pb.GenerateRequest(
            prompt="moon =", task_examples=[pb.TaskExample(input="a", output="b")]
        )
        ls = pb.ListDeltasRequest()

        def gateway(creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
            target = f"127.0.0.1:{gport}"
            return (
                grpc.aio.secure_channel(target, creds)
                if creds
                else grpc.aio.insecure_channel(target)
            )

        def admin(creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
            target = f"127.0.0.1:{aport}"
            return (
                grpc.aio.secure_channel(target, creds)
                if creds
                else grpc.aio.insecure_channel(target)
            )

        cases = [
            # (channel, call, expected)
            (gateway(_creds(pki.ca)), "gen", grpc.StatusCode.OK),
            (gateway(None), "gen", grpc.StatusCode.UNAVAILABLE),  # plaintext to a TLS port
            (gateway(_creds(pki.other_ca)), "gen", grpc.StatusCode.UNAVAILABLE),  # untrusted server
            (admin(_creds(pki.ca, pki.client_cert, pki.client_key)), "ls", grpc.StatusCode.OK),
            (admin(_creds(pki.ca)), "ls", grpc.StatusCode.UNAVAILABLE),  # no client certificate
            (
                admin(_creds(pki.ca, pki.rogue_cert, pki.rogue_key)),
                "ls",
                grpc.StatusCode.UNAVAILABLE,
            ),
            (admin(None), "ls", grpc.StatusCode.UNAVAILABLE),
        ]
        for i, (channel, call, expected) in enumerate(cases):
            async with channel:
                if call == "gen":
                    code = await _code(pb_grpc.GatewayStub(channel).Generate(req, timeout=30))
                else:
                    code = await _code(pb_grpc.AdminStub(channel).ListDeltas(ls, timeout=30))
            assert code == expected, (i, code)
    # The client library speaks TLS too; without mTLS, Admin over TLS needs the token.
    tls.pop("admin_client_ca_file")
    async with running_gateway(tmp_path / "tls-only", tiny_llama, sources, **tls) as gw:
        target, admin_target = f"localhost:{gw.server.port}", f"localhost:{gw.server.admin_port}"

        def session(token: str | None) -> list[str]:
            with CocktailClient(target, admin_target=admin_target, token=token, tls_ca=pki.ca) as c:
                c.register("v0", sources / "v0")
                r = c.generate("moon =", merge=merge_spec({"v0": 1.0}), max_tokens=3)
                assert r.usage.completion_tokens > 0
                return [d.name for d in c.deltas().deltas]

        assert await asyncio.to_thread(session, TOKEN) == ["v0"]
        with pytest.raises(grpc.RpcError) as e:
            await asyncio.to_thread(session, None)
        assert e.value.code() == UNAUTH  # type: ignore[attr-defined]


# -- secrets in logs and metrics ---------------------------------------------------------
def test_secrets_never_reach_logs_or_metrics(
    tmp_path: Path, tiny_llama: Path, sources: Path, pki: Pki
) -> None:
    """A whole session of a real server at DEBUG level; its output and /metrics hold no secret."""
    token = "tok-" + os.urandom(12).hex()
    wrong = "guess-" + os.urandom(12).hex()
    (tmp_path / "token").write_text(token + "\n")
    config = tmp_path / "cocktail.yaml"
    config.write_text(
        f"base_model: {tiny_llama}\ndelta_store: {tmp_path / 'store'}\n"
        f"allowed_source_roots: [{sources}]\nadmin_token_file: {tmp_path / 'token'}\n"
        f"tls_cert_file: {pki.server_cert}\ntls_key_file: {pki.server_key}\n"
        "port: 0\nadmin_port: 0\nmetrics_port: 0\nstore_poll_seconds: 0\n"
    )
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        serve_argv(config, ready, verbose=True),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        ports = json.loads(ready.read_text())
        target, admin = f"localhost:{ports['port']}", f"localhost:{ports['admin_port']}"
        with CocktailClient(target, admin_target=admin, token=token, tls_ca=pki.ca) as c:
            c.register("v0", sources / "v0", drop_rate=0.9)
            c.generate("moon =", examples=[("abc =", "ABC")], max_tokens=4)
            list(c.stream("moon =", merge=merge_spec({"v0": 1.0}), max_tokens=4))
            c.stats()
            with pytest.raises(grpc.RpcError):
                c.generate("", examples=[("a", "b")])
            with pytest.raises(grpc.RpcError):
                c.register("x", "/etc")
            c.remove("v0")
        with CocktailClient(target, admin_target=admin, token=wrong, tls_ca=pki.ca) as c:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as e:
                    c.deltas()
                assert e.value.code() == UNAUTH  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
        metrics = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    log = out.decode()
    assert "registered delta v0" in log and "DEBUG" in log  # the session really was logged
    key_body = "".join(pki.server_key.read_text().splitlines()[1:-1])
    for secret in (token, wrong, key_body[:40]):
        assert secret not in log, "a secret reached the log"
        assert secret not in metrics, "a secret reached the metrics"
    refused = 'cocktail_requests_total{code="UNAUTHENTICATED",rpc="ListDeltas"}'
    assert [ln for ln in metrics.splitlines() if ln.startswith(refused)] == [f"{refused} 3.0"]


# -- request ids ---------------------------------------------------------------------------
async def test_every_warning_and_error_of_a_failing_request_carries_its_id(
    tmp_path: Path, tiny_llama: Path, sources: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    caplog.handler.addFilter(RequestIdFilter())
    engine = FaultyEngine(tiny_llama)
    async with running_gateway(tmp_path, tiny_llama, sources, serve_with=engine) as gw:
        await gw.register("v0", sources / "v0")
        spec = pb.MergeSpec(weights={"v0": 1.0})
        caplog.clear()

        async def call(
            rid: str, prompt: str, examples: list[tuple[str, str]] | None = None
        ) -> None:
            req = pb.GenerateRequest(
                prompt=prompt,
                merge=None if examples else spec,
                task_examples=[pb.TaskExample(input=a, output=b) for a, b in examples or []],
            )
            try:
                await gw.gateway.Generate(req, metadata=(("x-request-id", rid),))
            except grpc.aio.AioRpcError as e:
                assert rid in e.details()

        # Alone, then inside batches with others: generation and scoring failures.
        await call("poison-alone", "POISON =")
        await call("poison-scoring", "moon =", [("POISON", "X")])
        blocker = asyncio.create_task(
            gw.generate(
                "x =",
                merge=pb.MergeSpec(weights={"base": 1.0}),
                sampling=pb.SamplingParams(max_tokens=60),
            )
        )
        await asyncio.sleep(0.05)
        await asyncio.gather(
            call("ok-1", "moon ="), call("poison-batched", "POISON ="), call("ok-2", "sun ="),
            call("ok-3", "moon =", [("cat =", "CAT")]), call("poison-task", "moon =", [("POISON", "Y")]),
        )  # fmt: skip
        await blocker
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines, "the failures were not logged"
    for record in lines:
        rid = getattr(record, "request_id", "-")
        assert rid != "-", f"no request id: {record.getMessage()}"
    by_id = {r.request_id for r in lines}  # type: ignore[attr-defined]
    assert {"poison-alone", "poison-scoring", "poison-batched", "poison-task"} <= by_id


# -- rate limits ---------------------------------------------------------------------------
def test_token_bucket_exactly() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_clients=2, clock=lambda: now[0])
    assert [limiter.try_acquire("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    now[0] = 0.25  # half a token back
    assert limiter.try_acquire("a") == pytest.approx(0.25)
    now[0] = 0.5
    assert limiter.try_acquire("a") == 0.0 and limiter.try_acquire("a") == pytest.approx(0.5)
    now[0] = 100.0  # refills to the burst, never beyond
    assert [limiter.try_acquire("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert limiter.try_acquire("b") == 0.0 and limiter.try_acquire("c") == 0.0
    assert len(limiter) == 2  # bounded: the least recent client ("a") was dropped


async def test_rate_limit_per_client(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    limits = {"requests_per_second_per_client": 0.5, "burst_per_client": 3}
    async with running_gateway(tmp_path, tiny_llama, sources, limits=limits) as gw:
        score = pb.ScoreTaskRequest(task_examples=[pb.TaskExample(input="a =", output="A")])

        async def codes(client: str, n: int) -> list[str]:
            md = (("x-client-id", client),)
            return [(await _code(gw.gateway.ScoreTask(score, metadata=md))).name for _ in range(n)]

        assert await codes("a", 5) == ["OK"] * 3 + ["RESOURCE_EXHAUSTED"] * 2
        assert await codes("b", 3) == ["OK"] * 3  # another client has its own bucket
        await asyncio.sleep(2.1)  # one token back for "a"
        assert (await codes("a", 2))[0] == "OK"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.ScoreTask(score, metadata=(("x-client-id", "a"),))
        assert "requests_per_second_per_client" in e.value.details()
        # Admin is not rate limited.
        for _ in range(6):
            await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
