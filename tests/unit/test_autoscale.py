"""The autoscale formula evaluator, driven by the documentation's own example formulas."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from snakemake_executor_saje.emulator.autoscale import (
    DEFAULT_MIN_INTERVAL,
    EVALUATION_ERROR,
    INSUFFICIENT_SAMPLES,
    SYNTAX_ERROR,
    TOO_LONG,
    AutoscaleError,
    Sample,
    evaluate,
    validate,
)

NOW = datetime(2016, 10, 13, 19, 18, 47, 805000, tzinfo=timezone.utc)  # a Thursday


def series(values: list[float], *, every: int = 30, end: datetime = NOW) -> list[Sample]:
    """Samples oldest first, the last one at `end`, one every `every` seconds."""
    n = len(values)
    return [Sample(end - timedelta(seconds=every * (n - 1 - i)), v) for i, v in enumerate(values)]


# "Example 2: Task-based adjustment" with the 25-node cap given in the brief.
PENDING = """
// Get pending tasks for the past 15 minutes.
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
// If we have fewer than 70 percent data points, we use the last sample point,
// otherwise we use the maximum of last sample point and the history average.
$tasks = $samples < 70 ? max(0,$PendingTasks.GetSample(1)) : max( $PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
$targetVMs = $tasks > 0? $tasks:max(0, $TargetDedicatedNodes/2);
$TargetDedicatedNodes = max(0, min($targetVMs, 25));
$NodeDeallocationOption = taskcompletion;
"""


class TestDocumentedFormulas:
    def test_pending_tasks_with_full_history_uses_max_of_last_and_average(self):
        samples = series([4.0] * 29 + [10.0])  # 30 samples = 100% of 15 minutes
        r = evaluate(PENDING, {"$PendingTasks": samples}, {"$CurrentDedicatedNodes": 3}, NOW)
        assert r.target_dedicated == 10
        assert r.node_deallocation_option == "taskcompletion"
        assert r.results == (
            "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
            "$samples=100;$targetVMs=10;$tasks=10"
        )

    def test_pending_tasks_average_wins_when_last_sample_is_low(self):
        samples = series([20.0] * 29 + [2.0])
        r = evaluate(PENDING, {"$PendingTasks": samples}, {"$CurrentDedicatedNodes": 3}, NOW)
        assert r.variables["$tasks"] == pytest.approx((20 * 29 + 2) / 30)
        assert r.target_dedicated == 19  # 19.4 truncated

    def test_pending_tasks_capped_at_25(self):
        r = evaluate(PENDING, {"$PendingTasks": series([100.0] * 30)}, {"$CurrentDedicatedNodes": 3}, NOW)
        assert r.target_dedicated == 25

    def test_pending_tasks_sparse_history_uses_last_sample(self):
        samples = series([50.0, 7.0], every=300)  # 2 samples in 15 min: 6.67 %
        r = evaluate(PENDING, {"$PendingTasks": samples}, {"$CurrentDedicatedNodes": 3}, NOW)
        assert r.variables["$samples"] == pytest.approx(100 * 2 / 30)
        assert r.target_dedicated == 7
        assert "$samples=6.66667;" in r.results  # %g, as the service prints doubles

    def test_pending_tasks_no_work_halves_the_current_target(self):
        r = evaluate(PENDING, {"$PendingTasks": series([0.0] * 30)}, {"$CurrentDedicatedNodes": 6}, NOW)
        assert r.target_dedicated == 3
        r = evaluate(PENDING, {}, {"$CurrentDedicatedNodes": 6, "$TargetDedicatedNodes": 8}, NOW)
        assert r.target_dedicated == 4

    def test_recorded_pool_run_matches_service_output(self):
        # A real autoScaleRun: 29 of 30 samples, no active tasks, current target 1.
        formula = PENDING.replace("$PendingTasks", "$ActiveTasks").replace(
            "$TargetDedicatedNodes = max(0, min($targetVMs, 25));",
            "cappedPoolSize = 3;\n$TargetDedicatedNodes = max(1, min($targetVMs, cappedPoolSize));",
        )
        r = evaluate(formula, {"$ActiveTasks": series([0.0] * 29)}, {"$CurrentDedicatedNodes": 1}, NOW)
        assert r.results == (
            "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
            "$samples=96.6667;$targetVMs=0.5;$tasks=0;cappedPoolSize=3"
        )

    def test_sample_formula_pending_tasks_180_seconds(self):
        formula = """startingNumberOfVMs = 1;
maxNumberofVMs = 25;
pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs : avg($PendingTasks.GetSample(180 * TimeInterval_Second));
$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);
$NodeDeallocationOption = taskcompletion;"""
        assert evaluate(formula, {}, {}, NOW).target_dedicated == 1
        r = evaluate(formula, {"PendingTasks": series([6, 6, 8, 8, 10, 10])}, {}, NOW)
        assert r.target_dedicated == 8
        assert "maxNumberofVMs=25" in r.results and "pendingTaskSamplePercent=100" in r.results

    def test_preempted_nodes_formula(self):
        formula = """maxNumberofVMs = 25;
$TargetDedicatedNodes = min(maxNumberofVMs, $PreemptedNodeCount.GetSample(180 * TimeInterval_Second));
$TargetLowPriorityNodes = min(maxNumberofVMs , maxNumberofVMs - $TargetDedicatedNodes);
$NodeDeallocationOption = taskcompletion;"""
        r = evaluate(formula, {"$PreemptedNodeCount": series([2, 3, 4, 4, 4, 4])}, {}, NOW)
        assert (r.target_dedicated, r.target_low_priority) == (2, 23)

    def test_time_based_formula_matches_documented_results(self):
        formula = """$curTime = time();
$workHours = $curTime.hour >= 8 && $curTime.hour < 18;
$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
$isWorkingWeekdayHour = $workHours && $isWeekday;
$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;"""
        r = evaluate(formula, {}, {}, NOW)
        assert r.results == (
            "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;"
            "$curTime=2016-10-13T19:18:47.805Z;$isWeekday=1;$isWorkingWeekdayHour=0;$workHours=0"
        )
        assert r.node_deallocation_option is None  # not set; the service reports requeue
        assert evaluate(formula, {}, {}, NOW.replace(hour=9)).target_dedicated == 20

    def test_cpu_formula_with_current_dedicated(self):
        formula = """$totalDedicatedNodes =
    (min($CPUPercent.GetSample(TimeInterval_Minute * 10)) > 0.7) ?
    ($CurrentDedicatedNodes * 1.1) : $CurrentDedicatedNodes;
$totalDedicatedNodes =
    (avg($CPUPercent.GetSample(TimeInterval_Minute * 60)) < 0.2) ?
    ($CurrentDedicatedNodes * 0.9) : $totalDedicatedNodes;
$TargetDedicatedNodes = min(400, $totalDedicatedNodes)"""
        busy = series([0.9] * 120)
        r = evaluate(formula, {"$CPUPercent": busy}, {"$CurrentDedicatedNodes": 10}, NOW)
        assert r.target_dedicated == 11
        idle = series([0.1] * 120)
        assert evaluate(formula, {"$CPUPercent": idle}, {"$CurrentDedicatedNodes": 10}, NOW).target_dedicated == 9

    def test_initial_pool_size_formula_with_lifespan(self):
        started = "Thu, 13 Oct 2016 19:00:00 GMT"
        formula = f"""$TargetDedicatedNodes = 4;
lifespan         = time() - time("{started}");
span             = TimeInterval_Minute * 60;
startup          = TimeInterval_Minute * 10;
ratio            = 50;
$TargetDedicatedNodes = (lifespan > startup ? (max($RunningTasks.GetSample(span, ratio), $ActiveTasks.GetSample(span, ratio)) == 0 ? 0 : $TargetDedicatedNodes) : 4);"""
        idle = {"$RunningTasks": series([0] * 120), "$ActiveTasks": series([0] * 120)}
        r = evaluate(formula, idle, {}, NOW)
        assert r.target_dedicated == 0
        assert "lifespan=00:18:47.8050000" in r.results and "span=01:00:00" in r.results
        assert evaluate(formula, {}, {}, NOW - timedelta(minutes=15)).target_dedicated == 4

    def test_legacy_alias_names(self):
        formula = (
            "totalNodes=($CPUPercent.GetSamplePercent(TimeInterval_Minute*0,TimeInterval_Minute*10)<0.7?5:"
            "(min($CPUPercent.GetSample(TimeInterval_Minute*0, TimeInterval_Minute*10))>0.8?"
            "($CurrentDedicated*1.1):$CurrentDedicated));$TargetDedicated=min(100,totalNodes);"
        )
        r = evaluate(formula, {}, {"$CurrentDedicatedNodes": 2}, NOW)
        assert r.results == "$TargetDedicatedNodes=5;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;totalNodes=5"

    def test_full_name_beats_alias(self):
        r = evaluate("$TargetDedicated = 3; $TargetDedicatedNodes = 7", {}, {}, NOW)
        assert r.target_dedicated == 7


class TestSamples:
    def test_get_sample_count_returns_latest(self):
        r = evaluate("$v = $PendingTasks.GetSample(3); $TargetDedicatedNodes = val($v, 2)",
                     {"$PendingTasks": series([1, 2, 3, 4, 5])}, {}, NOW)
        assert r.variables["$v"] == (3.0, 4.0, 5.0)
        assert "$v=[3,4,5]" in r.results
        assert r.target_dedicated == 5

    def test_get_sample_between_two_look_backs(self):
        r = evaluate("$v = $RunningTasks.GetSample(1 * TimeInterval_Minute, 2 * TimeInterval_Minute)",
                     {"$RunningTasks": series([1, 2, 3, 4, 5, 6])}, {}, NOW)
        assert r.variables["$v"] == (3.0, 4.0)  # samples at now-90s and now-60s

    def test_insufficient_samples_error(self):
        formula = "$TargetDedicatedNodes = 1;\n$x = avg($PendingTasks.GetSample(TimeInterval_Minute * 10, 95));"
        with pytest.raises(AutoscaleError) as info:
            evaluate(formula, {"$PendingTasks": series([1.0] * 18)}, {}, NOW)
        err = info.value
        assert err.code == INSUFFICIENT_SAMPLES
        assert err.message == "Autoscale evaluation failed due to insufficient sample data"
        assert err.values == [{
            "name": "Message",
            "value": "Line 2, Col 24: Insufficient data from data set: $PendingTasks wanted 95%, received 90%",
        }]

    def test_documented_eighty_percent_succeeds(self):
        r = evaluate("$x = len($PendingTasks.GetSample(TimeInterval_Minute * 10, 80))",
                     {"$PendingTasks": series([1.0] * 18)}, {}, NOW)
        assert r.variables["$x"] == 18

    def test_get_sample_without_percentage_needs_some_data(self):
        with pytest.raises(AutoscaleError) as info:
            evaluate("$x = $CPUPercent.GetSample(TimeInterval_Minute * 10)", {}, {}, NOW)
        assert info.value.code == INSUFFICIENT_SAMPLES
        assert "wanted 10%, received 0%" in info.value.values[0]["value"]

    def test_guarded_get_sample_is_not_evaluated(self):
        formula = "$p = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5); $x = $p < 70 ? 0 : avg($PendingTasks.GetSample(TimeInterval_Minute * 5, 70))"
        assert evaluate(formula, {}, {}, NOW).variables["$x"] == 0

    def test_metadata_methods(self):
        samples = series([1, 2, 3])
        r = evaluate("$n = $PendingTasks.Count(); $b = $PendingTasks.HistoryBeginTime(); $p = $PendingTasks.GetSamplePeriod()",
                     {"$PendingTasks": samples}, {}, NOW)
        assert r.variables["$n"] == 3
        assert r.variables["$b"] == samples[0].time
        assert r.variables["$p"] == timedelta(seconds=30)

    def test_shorter_sample_period_for_the_emulator(self):
        r = evaluate("$p = $PendingTasks.GetSamplePercent(TimeInterval_Minute)",
                     {"$PendingTasks": series([1] * 12, every=5)}, {}, NOW, sample_period=timedelta(seconds=5))
        assert r.variables["$p"] == 100


class TestLanguage:
    @pytest.mark.parametrize(
        "expr, expected",
        [
            ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 / 4", 2.5), ("-3 + 1", -2), ("!0", 1),
            ("2 > 1 && 1 > 2", 0), ("2 > 1 || 1 > 2", 1), ("1 == 1 ? 5 : 6", 5), ("0 ? 1 : 0 ? 2 : 3", 3),
            ("avg(1, 2, 3, 6)", 3), ("sum(1, 2, 3)", 6), ("len(1, 2, 3)", 3), ("range(4, 1, 9)", 8),
            ("std(2, 4, 4, 4, 5, 5, 7, 9)", pytest.approx(2.138, abs=1e-3)), ("norm(3, 4)", 5),
            ("lg(8)", 3), ("log(1000)", pytest.approx(3)), ("ln(1)", 0), ("percentile($v, 50)", 2),
            ("max($v, 7)", 7), ("min($v * 2)", 2), ("val($v + $v, 1)", 4),
            ("(5 * TimeInterval_Minute) / 5 == TimeInterval_Minute", 1), ("$TaskSlotsPerNode * 2", 8),
            ("TimeInterval_Hour == 60 * TimeInterval_Minute", 1), ('"a" < "b"', 1),
        ],
    )
    def test_expressions(self, expr, expected):
        r = evaluate(f"$v = $PendingTasks.GetSample(3); $r = {expr}",
                     {"$PendingTasks": series([1, 2, 3])}, {"TaskSlotsPerNode": 4}, NOW)
        assert r.variables["$r"] == expected

    def test_interval_division_by_interval_is_not_defined(self):
        # the operation table has no timeinterval / timeinterval
        with pytest.raises(AutoscaleError) as info:
            evaluate("$r = TimeInterval_Hour / TimeInterval_Minute", {}, {}, NOW)
        assert info.value.code == EVALUATION_ERROR

    def test_stop_keeps_earlier_assignments(self):
        r = evaluate("$TargetDedicatedNodes = 2; $x = stop(); $TargetDedicatedNodes = 9", {}, {}, NOW)
        assert r.target_dedicated == 2 and "$x" not in r.variables

    def test_unset_targets_default_to_current_counts(self):
        r = evaluate("$x = 1", {}, {"$CurrentDedicatedNodes": 3, "$CurrentLowPriorityNodes": 2}, NOW)
        assert (r.target_dedicated, r.target_low_priority) == (3, 2)
        assert r.results.startswith("$TargetDedicatedNodes=3;$TargetLowPriorityNodes=2;$NodeDeallocationOption=requeue")

    @pytest.mark.parametrize("option", ["requeue", "terminate", "taskcompletion", "retaineddata"])
    def test_deallocation_options(self, option):
        assert evaluate(f"$NodeDeallocationOption = {option}", {}, {}, NOW).node_deallocation_option == option

    def test_last_statement_may_lack_semicolon_and_comments_are_allowed(self):
        validate("/* block */ $a = 1; // trailing\n$TargetDedicatedNodes = $a")

    def test_plain_and_dollar_user_variables(self):
        r = evaluate("x = 2; $y = x * 3; $TargetDedicatedNodes = $y", {}, {}, NOW)
        assert r.target_dedicated == 6 and r.results.endswith("$y=6;x=2")


class TestErrors:
    @pytest.mark.parametrize(
        "formula",
        [
            "$TargetDedicatedNodes = ",
            "$TargetDedicatedNodes = 1 +",
            "$TargetDedicatedNodes = (1",
            "$TargetDedicatedNodes == 1",
            "$TargetDedicatedNodes = 1 $x = 2",
            "$x = $undefined + 1",
            "$x = y; y = 1",
            "$PendingTasks = 3",
            "TimeInterval_Minute = 3",
            "$x = foo(1)",
            "$x = lastsample($PendingTasks)",
            "$x = $PendingTasks.GetSomething(1)",
            "$x = $PendingTasks.GetSample()",
            "$x = 1 ? 2",
            "$x = 1 # 2",
            "",
            ";;",
        ],
    )
    def test_syntax_errors(self, formula):
        with pytest.raises(AutoscaleError) as info:
            validate(formula)
        assert info.value.code == SYNTAX_ERROR
        assert info.value.values[0]["value"].startswith("Line ")

    def test_syntax_error_position(self):
        with pytest.raises(AutoscaleError) as info:
            validate("$a = 1;\n$b = 2 +* 3;")
        assert info.value.values[0]["value"].startswith("Line 2, Col 9:")

    def test_too_long(self):
        with pytest.raises(AutoscaleError) as info:
            validate("$x = 1;" + " " * 8200)
        assert info.value.code == TOO_LONG

    def test_too_many_statements(self):
        with pytest.raises(AutoscaleError) as info:
            validate("".join(f"$x{i} = {i};" for i in range(101)))
        assert info.value.code == SYNTAX_ERROR

    @pytest.mark.parametrize(
        "formula",
        [
            "$x = 1 / 0",
            "$x = TimeInterval_Minute + 1",
            '$x = "a" + 1',
            "$x = $PendingTasks + 1",
            "$x = avg($PendingTasks.GetSample(0))",
            "$TargetDedicatedNodes = TimeInterval_Minute",
            '$NodeDeallocationOption = "later"',
            "$x = (1).hour",
        ],
    )
    def test_evaluation_errors(self, formula):
        with pytest.raises(AutoscaleError) as info:
            evaluate(formula, {}, {}, NOW)
        assert info.value.code == EVALUATION_ERROR


def test_metric_names_without_dollar_and_extra_keys_as_the_emulator_passes_them():
    metrics = {"PendingTasks": series([3.0] * 30), "CurrentDedicatedNodes": series([1.0] * 30),
               "UsableNodeCount": series([1.0] * 30)}
    current = {"PendingTasks": 3, "CurrentDedicatedNodes": 1, "UsableNodeCount": 1, "TaskSlotsPerNode": 2,
               "TargetDedicatedNodes": 1.0, "TargetLowPriorityNodes": 0.0}
    formula = PENDING + "$u = $UsableNodeCount.GetSample(1);"
    r = evaluate(formula, metrics, current, NOW)
    assert r.target_dedicated == 3 and r.variables["$u"] == (1.0,)


def test_minimum_interval_is_five_minutes():
    assert DEFAULT_MIN_INTERVAL == timedelta(minutes=5)
