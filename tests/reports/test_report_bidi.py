"""Unicode bidi override/isolate controls in user text (a conversation title, a client, a
model, an error) are shown as visible marks in every report page, never written raw."""

from __future__ import annotations

import re

from reportrows import row, write_rows

from kimi_intercept.reports import pages as report
from kimi_intercept.reports.formatting import no_bidi

# "Trojan Source": U+202E makes "txt.exe" display reversed; U+2066/U+2069 isolate a run.
RLO, LRI, PDI = "\u202e", "\u2066", "\u2069"
CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def test_no_bidi_marks_every_control_and_keeps_other_text():
    text = "".join(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
    assert no_bidi(text) == "".join(
        f"[U+{c:04X}]" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
    )
    assert no_bidi("héllo \u200f עברית") == "héllo \u200f עברית"  # RLM and RTL text stay


def test_bidi_controls_never_reach_the_report_html(tmp_path):
    db = tmp_path / "kimi.db"
    write_rows(
        db,
        [
            (
                row(
                    "r1",
                    "2026-11-20T09:15:00.000Z",
                    client=f"agent{RLO}exe.txt",
                    client_model=f"gpt{LRI}-4o{PDI}",
                    model=f"kimi{RLO}k2",
                    conversation_id="c1",
                    conversation_title=f"fix {RLO}gnp.exe{PDI} please",
                    outcome="error",
                    status_code=502,
                    error=f"upstream said {RLO}kO",
                ),
                [],
            )
        ],
    )
    out = tmp_path / "out"
    built = report.build_report(db, out)
    html = {p.name: p.read_text("utf-8") for p in built.pages}
    assert len(html) > 2
    for name, text in html.items():
        assert not CONTROLS.search(text), name
    everything = "\n".join(html.values())
    assert "agent[U+202E]exe.txt" in everything
    assert "fix [U+202E]gnp.exe[U+2069] please" in everything
    assert "upstream said [U+202E]kO" in everything
    assert "kimi[U+202E]k2" in everything
