"""Flow files for AI Spine: validation, safe ``when`` conditions, versions.

Shared by the orchestrator (which loads ``flows/*.yaml``) and the gateway (which accepts
flows through its API). Pure code: the only I/O is :func:`load_flow_file` reading one file.

    >>> defn = load_flow_text(text, "flows/credit_analysis.yaml")   # or FlowValidationError
    >>> flow_version(defn)                                          # '3f0c…' (16 hex)
    >>> compile_condition("nodes.eddie.score > 0.7").evaluate(input_data, outputs)
"""

from __future__ import annotations

from .conditions import (
    ALLOWED_VARIABLES,
    MAX_CONDITION_LENGTH,
    Condition,
    compile_condition,
    evaluate_condition,
)
from .errors import (
    ConditionError,
    FlowError,
    FlowValidationError,
    InvalidCondition,
    Problem,
)
from .normalise import (
    derive_entry_points,
    derive_exit_points,
    flow_version,
    normalise,
    to_dict,
    to_yaml,
)
from .validate import (
    MAX_FILE_BYTES,
    MAX_NODES,
    load_flow_file,
    load_flow_text,
    validate_flow,
    validate_flow_dict,
)

__all__ = [
    "ALLOWED_VARIABLES",
    "MAX_CONDITION_LENGTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Condition",
    "ConditionError",
    "FlowError",
    "FlowValidationError",
    "InvalidCondition",
    "Problem",
    "compile_condition",
    "derive_entry_points",
    "derive_exit_points",
    "evaluate_condition",
    "flow_version",
    "load_flow_file",
    "load_flow_text",
    "normalise",
    "to_dict",
    "to_yaml",
    "validate_flow",
    "validate_flow_dict",
]
