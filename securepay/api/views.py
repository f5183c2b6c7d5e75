"""Payment-session endpoints. Thin: the serializers validate, the model moves the session."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, permissions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from securepay.api.serializers import SessionCreateSerializer, SessionSerializer
from securepay.models import IllegalTransition, PaymentSession, Status
from tenants.api_auth import IsTenantMember, request_tenant
from tenants.models import ApiKey
from tenants.scoping import get_for_tenant, scoped

ErrorSerializer = inline_serializer("Error", {"detail": serializers.CharField(), "code": serializers.CharField()})


def api_actor(request: Request) -> str:
    """Who did it, for the session's audit trail."""
    if isinstance(request.auth, ApiKey):
        return f"api:{request.auth.prefix}"
    return f"user:{request.user.get_username()}"


class WritesNeedApiKey(permissions.BasePermission):
    """Integrations create and end sessions; logged-in tenant users may only read."""

    message = "Creating or ending sessions needs a tenant API key."

    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or isinstance(request.auth, ApiKey)


class SessionPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class SessionListCreateView(generics.ListCreateAPIView):
    permission_classes = [IsTenantMember, WritesNeedApiKey]
    serializer_class = SessionSerializer
    pagination_class = SessionPagination

    def get_queryset(self):
        sessions = scoped(PaymentSession, request_tenant(self.request))
        query = self.request.query_params
        if query.get("reference"):
            sessions = sessions.filter(reference=query["reference"])
        if query.get("status"):
            sessions = sessions.filter(status=query["status"])
        return sessions.select_related("template", "agent").prefetch_related("attempts")

    @extend_schema(
        summary="List the tenant's payment sessions, newest first",
        parameters=[
            OpenApiParameter("reference", str, description="Only sessions with this reference."),
            OpenApiParameter("status", str, enum=Status.values, description="Only sessions in this status."),
        ],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Open a payment session with prefilled customer details",
        request=SessionCreateSerializer,
        responses={
            201: SessionSerializer,
            400: OpenApiResponse(
                description='Per-field errors, e.g. {"prefill": {"amount": ["This field is required."]}}'
            ),
        },
    )
    def post(self, request: Request, *args, **kwargs) -> Response:
        tenant = request_tenant(request)
        incoming = SessionCreateSerializer(data=request.data, context={"tenant": tenant})
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        session = PaymentSession.open_for(
            tenant=tenant,
            template=data["template"],
            actor=api_actor(request),
            details=data["details"],
            amount_minor=data["amount_minor"],
            currency=data["template"].effective_currency,
            reference=data["reference"],
            callback_url=data["callback_url"],
            agent=data["agent"],
        )
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailView(generics.RetrieveAPIView):
    permission_classes = [IsTenantMember]
    serializer_class = SessionSerializer

    def get_object(self) -> PaymentSession:
        return get_for_tenant(PaymentSession, request_tenant(self.request), pk=self.kwargs["session_id"])

    @extend_schema(summary="A session's status, secure state and latest payment result (never card data)")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SessionEndView(APIView):
    permission_classes = [IsTenantMember, WritesNeedApiKey]

    @extend_schema(
        summary="End a session",
        request=None,
        responses={
            200: SessionSerializer,
            404: OpenApiResponse(description="No such session for this tenant."),
            409: OpenApiResponse(ErrorSerializer, description="The session cannot end now, e.g. while processing."),
        },
    )
    def post(self, request: Request, session_id) -> Response:
        session = get_for_tenant(PaymentSession, request_tenant(request), pk=session_id)
        try:
            session.end(api_actor(request))
        except IllegalTransition as exc:
            return Response(
                {"detail": f"A session in status {exc.current!r} cannot be ended.", "code": "illegal_transition"},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(SessionSerializer(session).data)
