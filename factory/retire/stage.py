"""The retire chain as one stage function: gather the facts, plan, apply (when asked).

`factory retire` and the nightly pipeline's retire step both call `retire_images`, so the two
can never drift apart.
"""

from __future__ import annotations

from factory.output import Progress
from factory.retire.apply import RetireResult, apply_retire
from factory.retire.gather import RetireScope, gather_retire
from factory.retire.plan import RetireSettings, plan_retire


def retire_images(
    scope: RetireScope,
    settings: RetireSettings,
    *,
    apply: bool,
    progress: Progress | None = None,
) -> RetireResult:
    """Plan retirement in every region and account; with `apply`, take each image's next step.

    Without `apply` the result holds the plan and no outcomes (nothing was changed).
    """
    facts = gather_retire(scope, settings, progress=progress)
    plan = plan_retire(facts, settings)
    if progress:
        progress.info(
            f"retire: plan made with {plan.api_calls} API calls "
            f"({', '.join(f'{k} {v}' for k, v in plan.calls_by_operation.items())})"
        )
    if not apply:
        return RetireResult(plan=plan, outcomes=(), api_calls=0)
    return apply_retire(plan, scope, progress=progress)
