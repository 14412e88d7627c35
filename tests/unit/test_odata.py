"""The emulator's OData subset, checked against the examples in the Batch documentation."""

from __future__ import annotations

import time

import pytest

from snakemake_executor_saje.emulator.odata import (
    ODataError,
    compile_filter,
    select_fields,
    validate_expand,
)


def task(tid: str, state: str, exit_code: int | None = None, created: str = "2025-01-01T00:00:00Z") -> dict:
    t = {"id": tid, "state": state, "creationTime": created, "commandLine": "/bin/true"}
    if exit_code is not None:
        t["executionInfo"] = {"exitCode": exit_code, "result": "success" if exit_code == 0 else "failure"}
    return t


TASKS = [
    task("renderTask-1", "running"),
    task("renderTask-2", "completed", 0, "2025-01-02T00:00:00.1234567Z"),
    task("other-3", "completed", 3, "2025-01-03T00:00:00Z"),
    task("other-4", "active"),
]


def ids(clause: str, kind: str | None = "tasks") -> list[str]:
    pred = compile_filter(clause, kind)
    return [t["id"] for t in TASKS if pred(t)]


class TestFilter:
    def test_doc_example_running_render_tasks(self):
        assert ids("(state eq 'running') and startswith(id, 'renderTask')") == ["renderTask-1"]

    def test_doc_example_nonzero_exit_codes(self):
        assert ids("(executionInfo/exitCode lt 0) or (executionInfo/exitCode gt 0)") == ["other-3"]

    def test_enum_values_are_case_insensitive(self):
        assert ids("state eq 'Completed'") == ["renderTask-2", "other-3"]
        assert ids("executionInfo/result eq 'FAILURE'") == ["other-3"]

    def test_ids_compare_case_insensitively(self):
        assert ids("startswith(id,'RENDER')") == ["renderTask-1", "renderTask-2"]

    def test_ne_and_not(self):
        assert ids("state ne 'completed'") == ["renderTask-1", "other-4"]
        assert ids("not (state eq 'completed')") == ["renderTask-1", "other-4"]

    def test_keywords_are_case_insensitive(self):
        assert ids("state eq 'active' OR state EQ 'running'") == ["renderTask-1", "other-4"]

    def test_precedence_and_binds_tighter_than_or(self):
        clause = "state eq 'active' or state eq 'completed' and executionInfo/exitCode eq 0"
        assert ids(clause) == ["renderTask-2", "other-4"]

    def test_missing_nested_property_is_null(self):
        assert ids("executionInfo/exitCode eq 0") == ["renderTask-2"]
        assert ids("executionInfo/exitCode ne 0") == ["renderTask-1", "other-3", "other-4"]
        assert ids("executionInfo eq null", None) == ["renderTask-1", "other-4"]

    def test_datetime_literals_w3c_and_rfc1123(self):
        assert ids("creationTime gt DateTime'2025-01-01T12:00:00Z'") == ["renderTask-2", "other-3"]
        assert ids("creationTime ge datetime'Thu, 02 Jan 2025 00:00:00 GMT'") == ["renderTask-2", "other-3"]
        # seven fractional digits, as the service writes them, still compare as times
        assert ids("creationTime gt DateTime'2025-01-02T00:00:00Z'") == ["renderTask-2", "other-3"]

    def test_literal_on_the_left(self):
        assert ids("0 lt executionInfo/exitCode") == ["other-3"]

    def test_string_escape(self):
        pred = compile_filter("id eq 'it''s'", "tasks")
        assert pred({"id": "it's"}) and not pred({"id": "its"})

    def test_booleans_and_numbers(self):
        pools = [{"id": "a", "enableAutoScale": True}, {"id": "b", "enableAutoScale": False}]
        pred = compile_filter("enableAutoScale eq true", "pools")
        assert [p["id"] for p in pools if pred(p)] == ["a"]
        assert compile_filter("executionInfo/exitCode ge -1.5", "tasks")({"executionInfo": {"exitCode": -1}})

    def test_files_startswith_name(self):
        pred = compile_filter("startswith(name,'wd/')", "files")
        assert pred({"name": "wd/stdout.txt"}) and not pred({"name": "stdout.txt"})

    def test_empty_filter_matches_all(self):
        assert ids("") == [t["id"] for t in TASKS]

    @pytest.mark.parametrize(
        "clause",
        [
            "state eq",
            "state eq 'a' and",
            "(state eq 'a'",
            "state eq 'a')",
            "state = 'a'",
            "state eq 'unterminated",
            "startswith(id)",
            "state eq 'a' xor id eq 'b'",
            "creationTime gt DateTime'not a date'",
            "state eq state",
        ],
    )
    def test_syntax_errors(self, clause):
        with pytest.raises(ODataError):
            compile_filter(clause, "tasks")

    @pytest.mark.parametrize(
        "clause, kind",
        [
            ("commandLine eq 'x'", "tasks"),  # not filterable on list tasks
            ("State eq 'active'", "tasks"),  # property names are case-sensitive
            ("state gt 'active'", "tasks"),  # state allows eq/ne only
            ("executionInfo/exitCode eq 'zero'", "tasks"),  # type mismatch
            ("name eq 'x'", "files"),  # files only take startswith
            ("vmSize eq 'x'", "jobs"),
            ("id eq 'x'", "subtasks"),  # no $filter there
        ],
    )
    def test_rejected_by_the_service_table(self, clause, kind):
        with pytest.raises(ODataError):
            compile_filter(clause, kind)

    def test_unknown_property_accepted_without_kind(self):
        assert compile_filter("commandLine eq '/bin/true'")(TASKS[0])

    def test_error_carries_message(self):
        with pytest.raises(ODataError) as info:
            compile_filter("foo eq 1", "tasks")
        assert "foo" in info.value.message

    def test_fast_enough_for_ten_thousand_tasks_per_page(self):
        rows = [task(f"t{i}", "completed" if i % 2 else "running", i % 3) for i in range(10_000)]
        pred = compile_filter("(state eq 'completed') and (executionInfo/exitCode ne 0)", "tasks")
        start = time.perf_counter()
        matched = sum(1 for r in rows if pred(r))
        assert time.perf_counter() - start < 0.5
        assert matched == sum(1 for i in range(10_000) if i % 2 and i % 3)


class TestSelect:
    def test_top_level_properties(self):
        out = select_fields(TASKS[1], "id, state,executionInfo")
        assert out == {"id": "renderTask-2", "state": "completed", "executionInfo": TASKS[1]["executionInfo"]}

    def test_nested_path_keeps_its_path(self):
        out = select_fields(TASKS[2], "id,executionInfo/exitCode")
        assert out == {"id": "other-3", "executionInfo": {"exitCode": 3}}

    def test_whole_and_nested_together_keep_the_whole(self):
        out = select_fields(TASKS[2], "executionInfo,executionInfo/exitCode")
        assert out["executionInfo"] == TASKS[2]["executionInfo"]

    def test_unknown_names_are_ignored(self):
        assert select_fields(TASKS[0], "id,noSuchThing,executionInfo/exitCode") == {"id": "renderTask-1"}

    def test_no_select_returns_a_copy(self):
        out = select_fields(TASKS[0], None)
        assert out == TASKS[0] and out is not TASKS[0]
        assert select_fields(TASKS[0], " ") == TASKS[0]


class TestExpand:
    def test_stats_only(self):
        assert validate_expand("stats", "pools") == frozenset({"stats"})
        assert validate_expand(None) == frozenset()
        with pytest.raises(ODataError):
            validate_expand("nodes", "pools")

    def test_not_on_nodes(self):
        with pytest.raises(ODataError):
            validate_expand("stats", "nodes")
