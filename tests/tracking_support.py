"""Reading back what the experiment trackers stored, with their own libraries, and a real MLflow server.

Everything stays on this machine: the MLflow server listens on 127.0.0.1 at a free port (SQLite store and
artifacts in the test's folder), W&B runs offline, and both libraries' telemetry is switched off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "WANDB_MODE": "offline",
               "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}


def offline(monkeypatch, home: Path) -> None:
    """No tracker library reaches beyond this machine or writes outside `home`."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(home / key.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def metrics_jsonl(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {name: [(step, value), ...]}, in the order written."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                series.setdefault(key, []).append((record["step"], value))
    return series


def assert_same_series(logged: dict, run_dir: Path, *, exact: bool = False, resumed: bool = False) -> None:
    """The tracker's series equal metrics.jsonl's, step for step (TensorBoard keeps float32). A tracker that
    kept the steps a crashed session had sent holds that session's images/s there, not the resumed one's."""
    expected = metrics_jsonl(run_dir)
    assert set(expected) <= set(logged), (sorted(expected), sorted(logged))
    for key, series in expected.items():
        assert [s for s, _ in logged[key]] == [s for s, _ in series], key
        if resumed and key == "images_per_s":
            continue
        values = [v for _, v in series]
        assert [v for _, v in logged[key]] == (values if exact else pytest.approx(values, rel=1e-6)), key


# ---- TensorBoard ---------------------------------------------------------------------------------------------
def tensorboard_run(logdir: Path):
    """tensorboard's own EventAccumulator over one run's event files (every image and text kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_scalars(accumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def tensorboard_hparams(accumulator) -> dict:
    """The hparams a run was tagged with (the HPARAMS dashboard's columns), from the plugin's own protos."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for key, value in data.session_start_info.hparams.items()}


# ---- MLflow ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL the server and its workers (it runs in its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@contextlib.contextmanager
def mlflow_server(root: Path, timeout_s: float = 240.0):
    """`mlflow server` on 127.0.0.1 at a free port, a SQLite backend store and artifacts under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "w")
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc)
    try:
        wait_healthy(server, time.monotonic() + timeout_s, root / "server.log")
        yield server
    finally:
        server.kill()
        log.close()


def wait_healthy(server: MlflowServer, deadline: float, log: Path) -> None:
    while True:
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.25)


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---- Weights & Biases ----------------------------------------------------------------------------------------------
# An offline run's run-ID.wandb is W&B's record log: a 7-byte file header, then LevelDB-style blocks of 32 KiB whose
# chunks (CRC-32, length, type) carry serialised `wandb_internal_pb2.Record` protos (the library's own schema).
BLOCK, CHUNK_HEADER, FULL, LAST = 32768, 7, 1, 4


def wandb_records(path: Path):
    """The Record protos of one .wandb file, each chunk's checksum checked."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if left < CHUNK_HEADER or (length == 0 and kind == 0):  # the padding at a block's end
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: a damaged record at byte {pos}"
        pos += CHUNK_HEADER + length
        pending += chunk
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


@dataclass
class WandbRun:
    run_id: str
    project: str
    group: str
    name: str
    tags: list[str]
    config: dict
    history: list[dict]  # one dict per committed step
    summary: dict
    files: list[str]


def wandb_offline_run(folder: Path) -> WandbRun:
    """What one offline-run-* folder holds, from its records."""
    (log,) = Path(folder).glob("run-*.wandb")
    run, history, summary, files = None, [], {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
        elif kind == "files":
            files += [f.path for f in record.files.files]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return WandbRun(run.run_id, run.project, run.run_group, run.display_name, list(run.tags), config, history,
                    summary, files)


def wandb_series(runs: list[WandbRun], key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric across the offline folders of one run, in the order they were written."""
    return [(row["_step"], row[key]) for run in runs for row in run.history if key in row]
