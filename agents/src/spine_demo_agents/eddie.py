"""eddie — deterministic credit-risk scoring (agent type ``processor``).

Inputs: ``income`` (monthly, > 0), ``amount`` (> 0), ``term_months`` (whole, ≥ 1) and
``debts`` (monthly payments on other debts, ≥ 0, default 0). They are read from the
dependencies' outputs (``applicant`` from zoe, or the fields themselves), falling back to
the execution input (its fields or its ``applicant``); a dependency's value wins. A missing
or unusable value is an error result naming it — eddie never invents data.

The formula (the same numbers always give the same answer)::

    payment   = amount / term_months                      # monthly, no interest
    dti       = (debts + payment) / income                # debt-to-income ratio
    lti       = amount / (12 * income)                    # loan-to-annual-income
    afford    = clamp(1 - dti / 0.60, 0, 1)               # 0 at a DTI of 60 % or more
    size      = clamp(1 - lti / 2.0, 0, 1)                # 0 at two years' income or more
    score     = round(0.7 * afford + 0.3 * size, 4)       # in [0, 1]

    decision  = "approve" if score >= t
                "review"  if score >= t - 0.25
                "reject"  otherwise                        # t = config.risk_threshold (0.7)

More income never lowers the score; more debts or a larger amount never raise it; a
longer term never lowers it. ``reasons`` explains each figure in words. Output:
``{score, decision, reasons, monthly_payment, debt_to_income, loan_to_annual_income,
risk_threshold}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spine_agent import Agent, AgentInfo, Task

from .fields import FieldProblem, coerce, fields_of

DEFAULT_THRESHOLD = 0.7
REVIEW_BAND = 0.25
DTI_LIMIT = 0.60
LTI_LIMIT = 2.0
WEIGHT_AFFORD = 0.7
WEIGHT_SIZE = 0.3
REQUIRED: tuple[str, ...] = ("income", "amount", "term_months")


class InvalidApplication(ValueError):
    """The inputs cannot be scored: something is missing or unusable."""


@dataclass(frozen=True)
class Assessment:
    score: float
    decision: str
    reasons: tuple[str, ...]
    monthly_payment: float
    debt_to_income: float
    loan_to_annual_income: float
    risk_threshold: float

    def as_output(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "monthly_payment": self.monthly_payment,
            "debt_to_income": self.debt_to_income,
            "loan_to_annual_income": self.loan_to_annual_income,
            "risk_threshold": self.risk_threshold,
        }


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def decide(score: float, threshold: float) -> str:
    if score >= threshold:
        return "approve"
    if score >= threshold - REVIEW_BAND:
        return "review"
    return "reject"


def score_application(
    *,
    income: float,
    amount: float,
    term_months: int,
    debts: float = 0.0,
    threshold: float = DEFAULT_THRESHOLD,
) -> Assessment:
    """The formula of the module docstring; inputs must already be valid."""
    payment = amount / term_months
    dti = (debts + payment) / income
    lti = amount / (12 * income)
    afford = _clamp(1 - dti / DTI_LIMIT)
    size = _clamp(1 - lti / LTI_LIMIT)
    score = round(WEIGHT_AFFORD * afford + WEIGHT_SIZE * size, 4)
    decision = decide(score, threshold)
    if dti <= 0.35:
        dti_word = "affordable"
    elif dti <= 0.5:
        dti_word = "stretched"
    else:
        dti_word = "too high"
    reasons = (
        f"monthly payment {payment:,.2f} = amount {amount:,.2f} over {term_months} months",
        f"debt-to-income {dti:.1%} = (debts {debts:,.2f} + payment {payment:,.2f}) "
        f"/ income {income:,.2f}: {dti_word} (scores 0 at {DTI_LIMIT:.0%})",
        f"the loan is {lti:.2f}x the annual income of {12 * income:,.2f} "
        f"(scores 0 at {LTI_LIMIT:g}x)",
        f"score {score:.4f} against threshold {threshold:.2f} "
        f"(review from {max(0.0, threshold - REVIEW_BAND):.2f}): {decision}",
    )
    return Assessment(
        score=score,
        decision=decision,
        reasons=reasons,
        monthly_payment=round(payment, 2),
        debt_to_income=round(dti, 4),
        loan_to_annual_income=round(lti, 4),
        risk_threshold=threshold,
    )


def application_from(task: Task) -> dict[str, Any]:
    """The raw fields: the execution input first, then each dependency (sorted by id)."""
    found: dict[str, Any] = {}
    sources: list[dict[str, Any]] = [task.input]
    sources += [task.dependencies[k] for k in sorted(task.dependencies)]
    for source in sources:
        found.update(fields_of(source))
        applicant = source.get("applicant")
        if isinstance(applicant, dict):
            found.update(fields_of(applicant))
    return found


def threshold_from(config: dict[str, Any]) -> float:
    value = config.get("risk_threshold", DEFAULT_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidApplication(f"risk_threshold must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise InvalidApplication(f"risk_threshold must be in [0, 1], got {value!r}")
    return float(value)


def assess(task: Task) -> Assessment:
    threshold = threshold_from(task.config)
    found = application_from(task)
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise InvalidApplication(
            f"cannot score without {', '.join(missing)} (looked in the dependencies' outputs "
            f"and the execution input)"
        )
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in (*REQUIRED, "debts"):
        if name in found:
            try:
                values[name] = coerce(name, found[name])
            except FieldProblem as exc:
                problems.append(str(exc))
    if problems:
        raise InvalidApplication("; ".join(problems))
    return score_application(
        income=values["income"],
        amount=values["amount"],
        term_months=values["term_months"],
        debts=values.get("debts", 0.0),
        threshold=threshold,
    )


agent = Agent(
    AgentInfo(
        agent_id="eddie",
        name="Eddie Analyst",
        description="Deterministic credit-risk scoring from income, amount, term and debts.",
        capabilities=("credit_analysis", "risk_scoring"),
        agent_type="processor",
    ),
    concurrency=64,
)


@agent.handler
async def handle(task: Task) -> dict[str, Any]:
    return assess(task).as_output()


def main() -> None:
    agent.run()


if __name__ == "__main__":
    main()
