"""Call control for the telephony/CTI integration: `/api/v1/calls/...`.

Tenant API keys only (a browser session cannot drive telephony). Each view
changes the `Call` row (its rules are `Call` methods) and tells the call's media
worker over the channel layer (protocol in `media.service`); the worker owns the
media and the secure state - but a hang-up ends the row and unsecures the session
here at once, since its worker may be gone.
"""

from __future__ import annotations

import ipaddress
import re

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from media.calls import CODECS, SUPERVISOR_MODES
from media.service import CALL_EVENTS, ensure_inprocess
from securepay.api.views import api_actor
from securepay.calls import (
    Call,
    CallNotLive,
    NoFreePort,
    SupervisorConflict,
    UnknownCode,
    WorkerBusy,
    WorkerUnavailable,
    link_call,
    start_call,
)
from tenants.api_auth import ApiKeyAuthentication, request_tenant
from tenants.models import ApiKey
from tenants.scoping import get_for_tenant

ErrorSerializer = inline_serializer("CallError", {"detail": serializers.CharField(), "code": serializers.CharField()})
NOT_FOUND = OpenApiResponse(description="No such call of this tenant (another tenant's calls are not found either).")
FIELD_ERRORS = OpenApiResponse(description="Per-field errors; nothing changed.")
NO_KEY = {
    401: OpenApiResponse(description="No or unknown API key."),
    403: OpenApiResponse(description="Not a tenant API key."),
}
UNAVAILABLE = OpenApiResponse(
    ErrorSerializer,
    description="`worker_unavailable`: the media worker is not running; `worker_busy`: it is at its limit "
    "(MEDIA_WORKER_MAX_LOAD of its core in use, or MEDIA_WORKER_MAX_CALLS live calls): retry later; "
    "`no_free_port`: no RTP port left.",
)
NO_FREE_PORT = OpenApiResponse(ErrorSerializer, description="`no_free_port`: no RTP port left for the leg.")


class HasApiKey(permissions.BasePermission):
    message = "Call control needs a tenant API key."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey)


ADDRESS_MAX_LENGTH = 64  # Call.caller_address / agent_address
PORT_PATTERN = re.compile(r"[1-9][0-9]{0,4}")  # canonical: no sign, space or leading zero
SCOPE_PATTERN = re.compile(r"[0-9A-Za-z_.-]{1,15}")  # an interface name or index (IFNAMSIZ)
BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def normalise_address(value: str) -> str:
    """A peer's "ip:port" (IPv6 also as "[ip]:port") as `media.service.parse_address` reads it:
    the address as `ipaddress` writes it (IPv6 unbracketed), a colon, the port."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    _, percent, scope = host.partition("%")
    try:
        if not sep or (percent and not SCOPE_PATTERN.fullmatch(scope)):
            raise ValueError(value)
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise serializers.ValidationError('Use "ip:port", e.g. "192.0.2.10:4000".', code="invalid")
    if not PORT_PATTERN.fullmatch(port) or int(port) > 65535:
        raise serializers.ValidationError("Port must be 1-65535, written without leading zeros.", code="invalid")
    unicast = getattr(ip, "ipv4_mapped", None) or ip
    if unicast.is_multicast or unicast.is_unspecified or unicast == BROADCAST:
        raise serializers.ValidationError(
            "Use the unicast address of the peer (not multicast, broadcast or unspecified).", code="invalid"
        )
    if ip.version != rtp_ip_version():
        raise serializers.ValidationError(
            f"The media workers send RTP over IPv{rtp_ip_version()} (MEDIA_RTP_HOST): use an IPv{rtp_ip_version()} "
            "address.",
            code="invalid",
        )
    if getattr(ip, "ipv4_mapped", None) is not None:
        return f"::ffff:{ip.ipv4_mapped}:{port}"  # as an IPv6 socket reports the peer (Python 3.11 writes hex)
    return f"{ip}:{port}"


def rtp_ip_version() -> int:
    """4 or 6: the family of the media workers' RTP sockets (they bind MEDIA_RTP_HOST)."""
    return 6 if ":" in settings.MEDIA_RTP_HOST else 4


class PeerAddressField(serializers.CharField):
    """Where a peer's RTP comes from and goes to; blank = learned from its first packet."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("help_text", '"ip:port", e.g. "192.0.2.10:4000"; blank: the first packet\'s source.')
        super().__init__(required=False, allow_blank=True, default="", max_length=ADDRESS_MAX_LENGTH, **kwargs)

    def to_internal_value(self, data) -> str:
        value = super().to_internal_value(data)
        if len(value) > ADDRESS_MAX_LENGTH:  # before parsing; the validator checks the normalised form too
            self.fail("max_length", max_length=ADDRESS_MAX_LENGTH)
        return normalise_address(value)


class SupervisorSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=64)
    mode = serializers.ChoiceField(choices=SUPERVISOR_MODES)
    address = PeerAddressField()
    port = serializers.IntegerField(read_only=True, help_text="Where the supervisor's phone sends RTP.")

    def validate_name(self, value: str) -> str:
        if value in ("caller", "agent"):
            raise serializers.ValidationError("This name is reserved.")
        return value


class CallCreateSerializer(serializers.Serializer):
    codec = serializers.ChoiceField(choices=sorted(CODECS), default="PCMU")
    event_payload_type = serializers.IntegerField(min_value=96, max_value=127, default=101)
    caller_address = PeerAddressField()
    agent_address = PeerAddressField()
    reference = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class CallSerializer(serializers.ModelSerializer):
    session = serializers.UUIDField(source="session_id", allow_null=True, read_only=True)
    session_code = serializers.SerializerMethodField()
    supervisors = serializers.SerializerMethodField()

    class Meta:
        model = Call
        fields = [
            "id", "reference", "state", "end_reason", "host", "caller_port", "agent_port", "codec",
            "event_payload_type", "caller_address", "agent_address", "session", "session_code", "supervisors",
            "created_at", "ended_at",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_session_code(self, call: Call) -> str | None:
        return call.session.code if call.session_id else None

    @extend_schema_field(SupervisorSerializer(many=True))
    def get_supervisors(self, call: Call) -> list[dict]:
        return [{"name": name, **entry} for name, entry in sorted(call.supervisors.items())]


class LinkSerializer(serializers.Serializer):
    code = serializers.RegexField(r"^\d{4}$", help_text="The 4-digit code shown on the agent's payment page.")


class EventSerializer(serializers.Serializer):
    event = serializers.ChoiceField(choices=CALL_EVENTS)
    # Any text: a break is never refused for what it says of supervisors (fail closed).
    supervisor = serializers.CharField(
        max_length=64,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text=(
            "For barge/monitor_stop: which supervisor leg of this call barges or stops. Without it, or "
            "naming no leg of this call, the event only breaks the secure state (a supervisor on the "
            "PBX's side). Ignored for other events."
        ),
    )


def conflict(code: str, detail: str) -> Response:
    return Response({"detail": detail, "code": code}, status=status.HTTP_409_CONFLICT)


def conflict_if_ended(call: Call) -> Response | None:
    return None if call.is_live else conflict("call_ended", "The call has ended.")


def unavailable(code: str, detail: str) -> Response:
    return Response({"detail": detail, "code": code}, status=status.HTTP_503_SERVICE_UNAVAILABLE)


class CallView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]

    def get_call(self, request: Request, call_id) -> Call:
        return get_for_tenant(Call.objects.select_related("session"), request_tenant(request), pk=call_id)

    def lock_call(self, request: Request, call_id) -> Call:
        """The call's row, locked to the end of the transaction: changes to `supervisors`
        read it and write it back, so two requests must not interleave."""
        calls = Call.objects.select_related("session").select_for_update(of=("self",))
        return get_for_tenant(calls, request_tenant(request), pk=call_id)


class CallListCreateView(CallView):
    @extend_schema(
        summary="Start relaying a call: returns the UDP ports the caller's and agent's RTP go to",
        request=CallCreateSerializer,
        responses={201: CallSerializer, 400: FIELD_ERRORS, **NO_KEY, 503: UNAVAILABLE},
    )
    def post(self, request: Request) -> Response:
        incoming = CallCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            if settings.MEDIA_WORKER_MODE == "inprocess":
                async_to_sync(ensure_inprocess)()
            call = start_call(request_tenant(request), **incoming.validated_data)
        except WorkerUnavailable as exc:
            return unavailable("worker_unavailable", str(exc))
        except WorkerBusy as exc:
            return unavailable("worker_busy", str(exc))
        except NoFreePort as exc:
            return unavailable("no_free_port", str(exc))
        return Response(CallSerializer(call).data, status=status.HTTP_201_CREATED)


class CallDetailView(CallView):
    @extend_schema(
        summary="A call's ports, legs, state and linked session",
        responses={200: CallSerializer, **NO_KEY, 404: NOT_FOUND},
    )
    def get(self, request: Request, call_id) -> Response:
        return Response(CallSerializer(self.get_call(request, call_id)).data)


class CallLinkView(CallView):
    @extend_schema(
        summary="Link the call to an open payment session by its 4-digit code (secures it)",
        description=(
            "A session has one live call: linking takes it from any other live call (which can then "
            "neither secure it nor key into it). A call on hold is linked unsecured and secured on unhold."
        ),
        request=LinkSerializer,
        responses={
            200: CallSerializer,
            400: OpenApiResponse(description="Malformed code, or no open session of this tenant has it."),
            **NO_KEY,
            404: NOT_FOUND,
            409: OpenApiResponse(ErrorSerializer, description="`call_ended`."),
        },
    )
    def post(self, request: Request, call_id) -> Response:
        call = self.get_call(request, call_id)
        incoming = LinkSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        if (ended := conflict_if_ended(call)) is not None:
            return ended
        try:
            link_call(call, incoming.validated_data["code"])
        except UnknownCode:
            raise serializers.ValidationError({"code": ["No open session of this tenant has this code."]})
        except CallNotLive:  # hung up since the check above
            call.refresh_from_db()
            return conflict_if_ended(call)
        return Response(CallSerializer(call).data)


class CallEventView(CallView):
    @extend_schema(
        summary="A telephony event: hold, unhold, switch_line, monitor_stop, barge, hangup",
        description=(
            "Hangup ends the call at once (the answer shows it ended; a second hangup gets 409) and "
            "unsecures its session even if the media worker is gone. The other events are carried out "
            "by the call's media worker; the answer shows the call as it was accepted."
        ),
        request=EventSerializer,
        responses={
            202: CallSerializer,
            400: FIELD_ERRORS,
            **NO_KEY,
            404: NOT_FOUND,
            409: OpenApiResponse(ErrorSerializer, description="`call_ended`."),
        },
    )
    def post(self, request: Request, call_id) -> Response:
        incoming = EventSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        event, supervisor = incoming.validated_data["event"], incoming.validated_data.get("supervisor")
        with transaction.atomic():
            call = self.lock_call(request, call_id)
            if (ended := conflict_if_ended(call)) is not None:
                return ended
            call.telephony_event(event, supervisor, api_actor(request))
        return Response(CallSerializer(call).data, status=status.HTTP_202_ACCEPTED)


class CallSupervisorListView(CallView):
    @extend_schema(
        summary="Add a supervisor leg (monitor | barge), or change its mode; returns the port its phone uses",
        description=(
            "201 for a new leg, 200 for an existing one (its mode changed, or nothing). A supervisor who "
            "barges hears nothing from the caller while the call's session is open, so barge cannot turn "
            "back into monitor until the session ends (409 `barged_during_session`). An existing leg keeps "
            "its address (another one: 409 `supervisor_exists`; remove the leg first)."
        ),
        request=SupervisorSerializer,
        responses={
            201: SupervisorSerializer,
            200: SupervisorSerializer,
            400: FIELD_ERRORS,
            **NO_KEY,
            404: NOT_FOUND,
            409: OpenApiResponse(
                ErrorSerializer, description="`call_ended`, `barged_during_session`, `supervisor_exists`."
            ),
            503: NO_FREE_PORT,
        },
    )
    def post(self, request: Request, call_id) -> Response:
        incoming = SupervisorSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        name, mode, address = (incoming.validated_data[key] for key in ("name", "mode", "address"))
        with transaction.atomic():
            call = self.lock_call(request, call_id)
            if (ended := conflict_if_ended(call)) is not None:
                return ended
            try:
                entry, created = call.put_supervisor(name, mode, address)
            except NoFreePort as exc:
                return unavailable("no_free_port", str(exc))
            except SupervisorConflict as exc:
                return conflict(exc.code, exc.detail)
        return Response({"name": name, **entry}, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class CallSupervisorDetailView(CallView):
    @extend_schema(
        summary="Remove a supervisor leg (a monitoring supervisor stopping breaks the secure state)",
        responses={
            204: None,
            **NO_KEY,
            404: OpenApiResponse(description="No such call or supervisor."),
            409: OpenApiResponse(ErrorSerializer, description="`call_ended`."),
        },
    )
    def delete(self, request: Request, call_id, name: str) -> Response:
        with transaction.atomic():
            call = self.lock_call(request, call_id)
            if (ended := conflict_if_ended(call)) is not None:
                return ended
            if not call.remove_supervisor(name):
                return Response(
                    {"detail": "No such supervisor.", "code": "not_found"}, status=status.HTTP_404_NOT_FOUND
                )
        return Response(status=status.HTTP_204_NO_CONTENT)
