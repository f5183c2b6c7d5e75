from django.urls import path

from gateways import api

urlpatterns = [
    path("sessions/<uuid:session_id>/refunds/", api.RefundCreateView.as_view(), name="api-session-refunds"),
]
