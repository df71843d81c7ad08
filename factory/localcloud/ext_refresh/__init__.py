"""Local cloud extension: Auto Scaling instance refresh (moto 5.2.5 has none), as AWS documents it.

Actions: StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh,
RollbackInstanceRefresh. Each refresh runs in a background thread of the local-cloud process,
acting on moto's Auto Scaling and EC2 backends directly, so replacements are real sandboxed
instances (the instance runtime) and their health is the runtime's health.

Semantics kept from AWS's documentation:

- batches: healthy capacity (old instances in service + replacements that passed their health
  check and their warmup) never drops below MinHealthyPercentage of the desired capacity
  (rounded up), and the group never holds more than MaxHealthyPercentage (default 100, rounded
  down). A batch is `max_total - min_healthy` instances (at least one: 100/100 replaces one at a
  time, 0 replaces all at once); while there is room above the desired capacity the batch's
  replacements are launched before the old instances go (launch before terminate);
- InstanceWarmup: after a replacement is healthy the refresh waits this long before counting it
  (default: the group's DefaultInstanceWarmup, else its HealthCheckGracePeriod);
- CheckpointPercentages / CheckpointDelay (default 3600 s): batches stop at each checkpoint and
  the refresh waits there (StatusReason says so);
- SkipMatching: instances already on the desired launch template version are not replaced;
- ScaleInProtectedInstances Refresh | Ignore | Wait (default; fails after an hour) and
  StandbyInstances Terminate | Ignore | Wait (default; fails after an hour);
- a replacement that is impaired, or not healthy within the health timeout, fails the refresh;
  with AutoRollback the previous configuration is restored by replacing the new instances again
  (RollbackInProgress -> RollbackSuccessful | RollbackFailed);
- AlarmSpecification: an alarm in ALARM state fails the refresh (and rolls back with AutoRollback);
- the group takes the DesiredConfiguration when the refresh succeeds; BakeTime -> Baking;
- AutoRollback and RollbackInstanceRefresh need a DesiredConfiguration, and refuse a group or
  launch template version of $Latest/$Default or an image from `resolve:ssm:`.

Also patched into moto (`launch_templates.py`), because rollouts depend on them: `resolve:ssm:`
image ids, CreateLaunchTemplateVersion's SourceVersion, and the launch template version each
group instance was launched from.

The parts: `api.py` (the actions) and `validation.py` (what they accept), `responses.py` (the
XML), `record.py` (a refresh's state), `engine.py` (its state machine, one thread each, and the
registry), `replace.py` (batch by batch), `batches.py` (the arithmetic, pure), `health.py`
(health checks and warmup), `fleet.py` (the group in moto), `launch_templates.py` (moto patches).
"""

from __future__ import annotations

from typing import Any

from factory.localcloud.ext_refresh.api import RefreshApi
from factory.localcloud.ext_refresh.engine import RefreshRegistry
from factory.localcloud.ext_refresh.launch_templates import patch_moto


def install(cloud: Any) -> None:
    """Patch moto and register the instance refresh actions; health comes from the runtime."""
    patch_moto()

    def _health(instance_id: str) -> str:
        runtime = getattr(cloud, "runtime", None)
        if runtime is None:
            return "ok"  # --no-instances: an instance is healthy once launched
        return str(runtime.health(instance_id))

    api = RefreshApi(RefreshRegistry(health=_health))
    app = cloud.app
    app.register("autoscaling", "StartInstanceRefresh", api.start_instance_refresh)
    app.register("autoscaling", "DescribeInstanceRefreshes", api.describe_instance_refreshes)
    app.register("autoscaling", "CancelInstanceRefresh", api.cancel_instance_refresh)
    app.register("autoscaling", "RollbackInstanceRefresh", api.rollback_instance_refresh)
