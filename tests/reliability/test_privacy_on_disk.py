"""Security review after a real demo run: nothing private reaches the disk or the logs.

One demo run through the library (`simulator.demo.run_demo`, every scenario once: the simulator,
the demo app with the collectors, a live ingest, the build), with the collectors' three JSON logs
written inside the data directory and every `callscope.*` / `pipeline.*` log record captured. Then
EVERY file under the data directory is read: Parquet decoded row by row, DuckDB files opened and
every table read, everything else (write-ahead log, state, logs) as raw bytes. None of it may hold:

- the phone numbers the simulator used (`from`/`to` of every call), in any form with all digits;
- the `token=` secret of the demo app's stream_url (the receiver's password): only `REDACTED`;
- any media payload the simulator streamed (base64 µ-law).

Positive controls make sure the scan reads what it should: the masked numbers and `token=REDACTED`
are found where the collectors put them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

import collectors
from simulator.audio import tone_payloads
from simulator.demo import run_demo
from simulator.messages import CallInfo
from simulator.scenarios import SCENARIOS
from tests.simulator.runs import every_scenario_once

TOKEN = re.compile(r"token=([A-Za-z0-9_\-%.~]+)")


def _texts(path: Path) -> list[str]:
    """What a file holds, as text: decoded where it is Parquet or DuckDB, raw bytes always."""
    texts = [path.read_bytes().decode("latin-1")]
    if path.suffix == ".parquet":
        texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
    elif path.suffix == ".duckdb":
        with duckdb.connect(str(path), read_only=True) as con:
            tables = con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE'"
            ).fetchall()
            for schema, table in tables:
                rows = con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
                texts.append(json.dumps(rows, default=str))
    return texts


def test_no_phone_number_token_or_payload_anywhere_on_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLSCOPE_PII_KEY", "reliability-test-key")
    data = tmp_path / "data"
    caplog.set_level(logging.DEBUG, logger="callscope")
    caplog.set_level(logging.DEBUG, logger="pipeline")
    options = every_scenario_once(data)
    with collectors.write_logs_to(data / "collector-logs"):
        result = run_demo(options)
    assert result.correct == result.total == len(SCENARIOS)

    call = CallInfo("any")
    numbers = {re.sub(r"\D", "", n)[-10:] for n in (call.from_number, call.to_number)}
    payloads = {payload[:24] for payload in tone_payloads()}
    files = [p for p in sorted(data.rglob("*")) if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".duckdb" for p in files)
    assert {p.name for p in (data / "collector-logs").iterdir()} >= {"answer_url.jsonl", "webhooks.jsonl"}

    findings: list[str] = []
    tokens_seen: set[str] = set()
    masks_seen = 0
    for path in files:
        for text in _texts(path):
            findings += [f"{path}: phone number {n}" for n in numbers if n in text]
            findings += [f"{path}: media payload" for p in payloads if p in text]
            tokens_seen.update(TOKEN.findall(text))
            masks_seen += text.count("***")
    log_text = "\n".join(record.getMessage() for record in caplog.records)
    findings += [f"log records: phone number {n}" for n in numbers if n in log_text]
    findings += ["log records: media payload" for p in payloads if p in log_text]
    tokens_seen.update(TOKEN.findall(log_text))

    assert findings == []
    # The stream_url's secret never appears, its redaction marker does. (Raw bytes may run the
    # marker into the next stored string, e.g. `REDACTEDwss`; a random token never starts so.)
    assert tokens_seen and all(token.startswith("REDACTED") for token in tokens_seen), tokens_seen
    assert masks_seen > 0  # masked numbers were read, so the scan covers the columns holding them
    assert caplog.records  # the collectors did log (warnings, lifecycle), just nothing private
