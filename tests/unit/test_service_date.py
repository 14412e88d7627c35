"""The service's time is read from the first answer's Date header (batch.ServiceDate)."""
import datetime as dt
from types import SimpleNamespace

from snakemake_executor_saje.batch import ServiceDate, http_date


def answer(date: str | None) -> SimpleNamespace:
    headers = {} if date is None else {"Date": date}
    return SimpleNamespace(http_response=SimpleNamespace(headers=headers))


def test_the_first_pages_date_is_kept_not_a_later_pages():
    hook = ServiceDate()
    hook(answer("Tue, 01 Dec 2026 22:00:00 GMT"))
    hook(answer("Tue, 01 Dec 2026 22:05:00 GMT"))
    assert hook.value == dt.datetime(2026, 12, 1, 22, 0, tzinfo=dt.timezone.utc)


def test_no_answer_or_no_date_or_a_malformed_one_gives_none():
    assert ServiceDate().value is None
    for date in (None, "", "yesterday"):
        hook = ServiceDate()
        hook(answer(date))
        assert hook.value is None
    assert http_date("not a date") is None
