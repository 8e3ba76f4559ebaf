"""Conversation titles from the user's own words, and fingerprinted conversations split into
runs (kimi_intercept.routing.conversations)."""

from __future__ import annotations

from kimi_intercept.routing.conversations import ConversationTracker, title_text
from kimi_intercept.routing.plan import conversation_key, conversation_title

REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:"
    "\n# claudeMd\nCodebase and user instructions are shown below.\n</system-reminder>"
)
CLAUDE_FIRST = {
    "role": "user",
    "content": [
        {"type": "text", "text": REMINDER},
        {"type": "text", "text": "Fix the failing test in   parser.py", "cache_control": {}},
    ],
}


def test_titles_skip_injected_blocks_and_keep_the_users_words():
    assert title_text(CLAUDE_FIRST["content"]) == "Fix the failing test in parser.py"
    cline = (
        "<task>\nAdd a --json flag to the CLI\n</task>\n\n<environment_details>\n# VSCode "
        "Visible Files\nsrc/cli.py\n</environment_details>"
    )
    assert title_text(cline) == "Add a --json flag to the CLI"
    assert title_text([{"type": "text", "text": REMINDER}]) == ""
    assert title_text("<system-reminder>cut off, no closing tag") == ""
    body = {"messages": [{"role": "system", "content": "You are Claude Code."},
                         {"role": "user", "content": REMINDER},
                         {"role": "user", "content": "explain this repo"}]}  # fmt: skip
    assert conversation_title(body) == "explain this repo"


def test_a_json_metadata_user_id_gives_the_session():
    first = {"messages": [{"role": "user", "content": "hi"}]}
    a = {**first, "user": '{"device_id": "d1", "session_id": "s-1"}'}
    b = {**first, "user": '{"device_id": "d1", "session_id": "s-2"}'}
    assert conversation_key([], a) != conversation_key([], b)
    later = {"messages": [{"role": "user", "content": "other"}], "user": a["user"]}
    assert conversation_key([], a) == conversation_key([], later)


def turn(n: int) -> list[dict]:
    """The hub messages of turn ``n`` (1-based) of one conversation."""
    messages: list[dict] = [{"role": "system", "content": "sys"}, CLAUDE_FIRST]
    for i in range(1, n):
        messages += [{"role": "assistant", "content": f"answer {i}"},
                     {"role": "user", "content": f"question {i + 1}"}]  # fmt: skip
    return messages


def test_a_conversation_goes_on_while_each_request_extends_the_last():
    t = ConversationTracker(idle_s=600)
    ids = [t.resolve("base", turn(n), 1000.0 + n) for n in (1, 2, 3, 3, 4)]
    assert ids == ["base"] * 5  # a retried turn (3 again) extends it too


def test_a_new_run_with_the_same_first_message_is_a_new_conversation():
    t = ConversationTracker(idle_s=600)
    first = [t.resolve("base", turn(n), 1000.0 + n) for n in (1, 2, 3)]
    again = [t.resolve("base", turn(n), 2000.0 + n) for n in (1, 2)]
    assert first == ["base"] * 3
    assert again[0] == again[1] != "base"


def test_a_rewound_turn_or_an_idle_gap_starts_a_new_conversation():
    """A rewind (the user edits their last question and goes on) replaces the message the
    previous request ended with."""
    t = ConversationTracker(idle_s=600)
    assert t.resolve("base", turn(2), 1000.0) == "base"
    edited = turn(3)
    edited[3] = {"role": "user", "content": "question 2, asked differently"}
    second = t.resolve("base", edited, 1001.0)
    assert second != "base"
    assert t.resolve("base", edited + [{"role": "assistant", "content": "x"}], 1002.0) == second
    third = t.resolve("base", turn(5), 1002.0 + 601)
    assert third not in ("base", second)


def test_moved_cache_markers_do_not_split_a_conversation():
    t = ConversationTracker()
    one = turn(2)
    one[-1] = {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {}}]}
    two = turn(3)
    two[3] = {"role": "user", "content": [{"type": "text", "text": "q"}]}
    assert t.resolve("base", one, 1.0) == t.resolve("base", two, 2.0) == "base"


def test_the_tracker_forgets_the_oldest_conversations():
    t = ConversationTracker(max_entries=2)
    for key in ("a", "b", "c"):
        t.resolve(key, turn(3), 1.0)
    assert t.resolve("a", turn(1), 2.0) == "a"  # forgotten: a first run again
