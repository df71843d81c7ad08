"""The four Auto Scaling actions: StartInstanceRefresh, DescribeInstanceRefreshes,
CancelInstanceRefresh and RollbackInstanceRefresh, answered from one registry of refreshes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from factory.localcloud.app import (
    ActionRequest,
    ActionResponse,
    ExtensionError,
    query_members,
    query_response,
)
from factory.localcloud.ext_refresh import fleet
from factory.localcloud.ext_refresh.engine import RefreshRegistry
from factory.localcloud.ext_refresh.record import CANCELLING, ROLLBACK_IN_PROGRESS, Refresh
from factory.localcloud.ext_refresh.responses import refresh_xml
from factory.localcloud.ext_refresh.validation import (
    check_auto_rollback,
    check_reversible,
    desired_spec,
    int_param,
    parse_preferences,
)

AUTOSCALING_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


def _response(action: str, inner_xml: str) -> ActionResponse:
    return query_response(AUTOSCALING_NS, action, inner_xml)


@dataclass
class RefreshApi:
    """The handlers, bound to the registry they start, find and stop refreshes in."""

    registry: RefreshRegistry

    def _stoppable(self, request: ActionRequest) -> Refresh:
        """The group's refresh a cancel or rollback request may act on."""
        name = str(request.params.get("AutoScalingGroupName") or "")
        fleet.find_group(request.account_id, request.region, name)
        refresh = self.registry.active(request.account_id, request.region, name)
        if refresh is None or refresh.status in (ROLLBACK_IN_PROGRESS, CANCELLING):
            raise ExtensionError(
                "ActiveInstanceRefreshNotFound",
                f"No in progress or pending Instance Refresh found for Auto Scaling group {name}",
            )
        return refresh

    def start_instance_refresh(self, request: ActionRequest) -> ActionResponse:
        params = request.params
        name = str(params.get("AutoScalingGroupName") or "")
        group = fleet.find_group(request.account_id, request.region, name)
        _, ec2 = fleet.backends(request.account_id, request.region)
        if self.registry.active(request.account_id, request.region, name) is not None:
            raise ExtensionError(
                "InstanceRefreshInProgress",
                f"An Instance Refresh is already in progress and blocks the execution of this "
                f"Instance Refresh for {name}.",
            )
        prefs = parse_preferences(params)
        desired = desired_spec(params, ec2)
        previous = fleet.group_spec(group)
        if prefs.auto_rollback:
            check_auto_rollback(desired, previous, ec2)
        refresh = Refresh(
            refresh_id=str(uuid.uuid4()),
            group_name=name,
            account_id=request.account_id,
            region=request.region,
            preferences=prefs,
            desired=desired,
            previous=previous,
            strategy=str(params.get("Strategy") or "Rolling"),
        )
        self.registry.add(refresh)
        self.registry.start(refresh)
        return _response(
            "StartInstanceRefresh", f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>"
        )

    def describe_instance_refreshes(self, request: ActionRequest) -> ActionResponse:
        params = request.params
        name = str(params.get("AutoScalingGroupName") or "")
        fleet.find_group(request.account_id, request.region, name)
        wanted = set(query_members(params, "InstanceRefreshIds"))
        refreshes = [
            r
            for r in self.registry.of_group(request.account_id, request.region, name)
            if not wanted or r.refresh_id in wanted
        ]
        limit = int_param(params, "MaxRecords") or 50
        start = int(params.get("NextToken") or 0)
        page = refreshes[start : start + limit]
        members = "".join(f"<member>{refresh_xml(r)}</member>" for r in page)
        token = f"<NextToken>{start + limit}</NextToken>" if start + limit < len(refreshes) else ""
        return _response(
            "DescribeInstanceRefreshes", f"<InstanceRefreshes>{members}</InstanceRefreshes>{token}"
        )

    def cancel_instance_refresh(self, request: ActionRequest) -> ActionResponse:
        refresh = self._stoppable(request)
        with refresh.lock:
            refresh.cancel_requested = True
            refresh.status = CANCELLING
            refresh.status_reason = "Cancelling the instance refresh."
        return _response(
            "CancelInstanceRefresh", f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>"
        )

    def rollback_instance_refresh(self, request: ActionRequest) -> ActionResponse:
        refresh = self._stoppable(request)
        _, ec2 = fleet.backends(request.account_id, request.region)
        check_reversible(refresh, ec2)
        with refresh.lock:
            refresh.rollback_requested = "Rollback initiated by user."
        return _response(
            "RollbackInstanceRefresh",
            f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>",
        )
