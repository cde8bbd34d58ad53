"""Usage saved to the spill file by an older Analytics (before `client_request_id` and `team`
were columns) is still written at the next start, with those columns empty; a line of no
known shape is set aside, not guessed at."""

from __future__ import annotations

import json
from pathlib import Path

from services.analytics import db
from services.analytics.writer import load_spill


def old_line(request_id: str, columns: int) -> str:
    row = {k: "" for k in db.COLUMNS}
    row.update(
        request_id=request_id, user_id="ana", segment="standard", tier=2, occurred_at="2026-11-02T10:00:00+00:00"
    )
    return json.dumps(list(row.values())[:columns])


def test_spill_lines_of_every_earlier_shape_are_rows_of_the_current_one(tmp_path: Path) -> None:
    spill, rejected = tmp_path / "spill.jsonl", tmp_path / "rejected.jsonl"
    n = len(db.COLUMNS)
    lines = [old_line("first", n - 2), old_line("then", n - 1), old_line("now", n), old_line("odd", n - 3)]
    spill.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = load_spill(str(spill), str(rejected))
    assert [r[0] for r in rows] == ["first", "then", "now"]
    assert all(len(r) == n for r in rows)
    team, client_id = db.COLUMNS.index("team"), db.COLUMNS.index("client_request_id")
    assert [(r[client_id], r[team]) for r in rows[:2]] == [("", ""), ("", "")]
    set_aside = [json.loads(line) for line in rejected.read_text(encoding="utf-8").splitlines()]
    assert len(set_aside) == 1 and '"odd"' in set_aside[0]["event"]
