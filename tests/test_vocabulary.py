"""The project's words are defined once (lcmsquant.vocabulary) and the documentation says the same."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from lcmsquant.vocabulary import BLOCKING_FLAGS, REVIEW_FLAGS, Flag, QCLevel, RuleId, flag_list

DOCS = REPO / "docs"


def _table_rows(text: str, section: str) -> dict[str, str]:
    """First cell -> second cell of every markdown table row of one `## section`, backticks removed."""
    rows = {}
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2:
            rows[cells[0]] = cells[1]
    return rows


def test_a_member_is_the_string_written_into_the_tables():
    assert Flag.BLQ == "BLQ" and ";".join([Flag.BLQ, Flag.ION_RATIO]) == "BLQ;ION_RATIO"
    assert flag_list("BLQ;ION_RATIO") == [Flag.BLQ, Flag.ION_RATIO] and flag_list("") == []


def test_blocking_and_review_flags_do_not_overlap():
    assert not set(BLOCKING_FLAGS) & set(REVIEW_FLAGS)


@pytest.mark.parametrize("flag", [f for f in Flag if f not in (Flag.BLQ, Flag.ALQ)])
def test_the_outputs_page_explains_each_flag_in_its_own_words(flag):
    rows = _table_rows((DOCS / "outputs.md").read_text(encoding="utf-8"), "Flags")
    assert rows.get(str(flag)) == flag.meaning


def test_the_outputs_page_explains_blq_and_alq():
    assert "BLQ / ALQ" in _table_rows((DOCS / "outputs.md").read_text(encoding="utf-8"), "Flags")


def test_every_rule_id_is_unique_and_titled_once():
    titles = [r.label for r in RuleId]
    assert len(set(titles)) == len(titles)
    assert {RuleId.for_qc_level(level) for level in (QCLevel.LLOQ, QCLevel.LQC, QCLevel.MQC, QCLevel.HQC)} == {
        RuleId.LLOQ_QCS_PASSING,
        RuleId.LQC_PASSING,
        RuleId.MQC_PASSING,
        RuleId.HQC_PASSING,
    }


def test_a_rule_of_older_results_is_known_by_its_title():
    assert RuleId.of_record({"rule": "carry-over (IS)"}) is RuleId.CARRYOVER_IS
    assert RuleId.of_record({"rule": "reworded", "id": "QC_COUNT"}) is RuleId.QC_COUNT
    assert RuleId.of_record({"rule": "a rule of a newer version"}) is None


def test_the_acceptance_page_names_every_rule_id():
    text = (DOCS / "science" / "acceptance.md").read_text(encoding="utf-8")
    missing = [r for r in RuleId if not re.search(rf"\b{r}\b", text)]
    assert not missing
