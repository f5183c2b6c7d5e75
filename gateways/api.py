"""Refunds through the REST API: tenant admins and integration keys only."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateways.models import Refund, RefundStatus
from gateways.refunds import NothingToRefund, RefundOutcomeUnknown, RefundTooLarge, refund_payment
from securepay.api.views import ErrorSerializer, api_actor
from securepay.models import PaymentSession
from securepay.money import amount_from_minor, amount_to_minor
from tenants.api_auth import IsIntegrationOrAdmin, request_tenant
from tenants.scoping import get_for_tenant


class RefundRequestSerializer(serializers.Serializer):
    amount = serializers.CharField(help_text="Major units as a decimal string, e.g. \"5.00\".")

    def validate_amount(self, value: str) -> int:
        try:
            minor = amount_to_minor(value, self.context["currency"])
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc
        if minor <= 0:
            raise serializers.ValidationError("The amount must be more than zero.")
        return minor


class RefundSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    session = serializers.UUIDField(source="attempt.session_id")
    amount = serializers.SerializerMethodField()
    currency = serializers.CharField(source="attempt.currency")
    status = serializers.CharField()
    reason_code = serializers.CharField()
    message = serializers.CharField()
    gateway_reference = serializers.CharField()
    refunded_total = serializers.SerializerMethodField()
    created = serializers.DateTimeField(source="created_at")

    def get_amount(self, refund: Refund) -> str:
        return amount_from_minor(refund.amount_minor, refund.attempt.currency)

    def get_refunded_total(self, refund: Refund) -> str:
        return amount_from_minor(refund.attempt.refunded_minor, refund.attempt.currency)


# Refund status -> HTTP status of the answer.
RESPONSE_STATUS = {
    RefundStatus.APPROVED: status.HTTP_201_CREATED,
    RefundStatus.DECLINED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    RefundStatus.ERROR: status.HTTP_502_BAD_GATEWAY,
    RefundStatus.PENDING: status.HTTP_502_BAD_GATEWAY,
}


class RefundCreateView(APIView):
    permission_classes = [IsIntegrationOrAdmin]

    @extend_schema(
        summary="Refund part or all of the session's approved payment",
        request=RefundRequestSerializer,
        responses={
            201: RefundSerializer,
            400: OpenApiResponse(description="`amount` is not a positive amount, or more than is left to refund."),
            404: OpenApiResponse(description="No such session for this tenant."),
            409: OpenApiResponse(ErrorSerializer, description="The session has no approved payment."),
            422: OpenApiResponse(RefundSerializer, description="The gateway declined the refund."),
            502: OpenApiResponse(RefundSerializer, description="The gateway failed or did not confirm the refund."),
        },
    )
    def post(self, request: Request, session_id) -> Response:
        session = get_for_tenant(PaymentSession, request_tenant(request), pk=session_id)
        form = RefundRequestSerializer(data=request.data, context={"currency": session.currency})
        form.is_valid(raise_exception=True)
        try:
            refund = refund_payment(session, form.validated_data["amount"], api_actor(request))
        except NothingToRefund:
            return Response({"detail": "This session has no approved payment to refund.", "code": "nothing_to_refund"},
                            status=status.HTTP_409_CONFLICT)
        except RefundTooLarge as exc:
            left = amount_from_minor(exc.refundable_minor, session.currency)
            return Response({"amount": [f"At most {left} {session.currency} is left to refund."]},
                            status=status.HTTP_400_BAD_REQUEST)
        except RefundOutcomeUnknown as exc:
            refund = exc.refund
        return Response(RefundSerializer(refund).data, status=RESPONSE_STATUS[refund.status])
