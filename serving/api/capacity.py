"""/api/capacity/: the GPU fleet against quotas, reservations, running and waiting replicas, per GPU
model (serving/capacity.py). Platform admins only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import tenancy
from serving import capacity
from serving.backends.base import PermanentBackendError, TransientBackendError


class IsPlatformAdmin(permissions.BasePermission):
    message = "Only a platform admin may see the platform's capacity."

    def has_permission(self, request: Request, view: Any) -> bool:
        return tenancy.is_platform_admin(request)


class BackendUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "backend_unavailable"


class CapacityView(APIView):
    permission_classes = [permissions.IsAuthenticated, IsPlatformAdmin]

    @extend_schema(responses={200: OpenApiResponse(description="Capacity per GPU model"), 503: None})
    def get(self, request: Request) -> Response:
        try:
            measured = capacity.current()
        except (TransientBackendError, PermanentBackendError) as error:
            raise BackendUnavailable(
                f"The nodes could not be read: {str(error).rstrip('.')}. The figures need them: try again, "
                "or grant the platform `list` on nodes."
            ) from error
        return Response(measured.as_dict())
