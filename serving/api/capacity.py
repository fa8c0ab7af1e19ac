"""/api/capacity/: the GPU fleet against quotas, reservations, running and waiting replicas, per GPU
model (serving/capacity.py). Platform admins only. When the backend's nodes cannot be read, the answer
still gives every figure the database holds, and `nodes_error` says why the nodes are missing."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import tenancy
from serving import capacity


class IsPlatformAdmin(permissions.BasePermission):
    message = "Only a platform admin may see the platform's capacity."

    def has_permission(self, request: Request, view: Any) -> bool:
        return tenancy.is_platform_admin(request)


class CapacityView(APIView):
    permission_classes = [permissions.IsAuthenticated, IsPlatformAdmin]

    @extend_schema(
        responses={200: OpenApiResponse(description="Capacity per GPU model (serving/capacity.py)")}
    )
    def get(self, request: Request) -> Response:
        return Response(capacity.current().as_dict())
