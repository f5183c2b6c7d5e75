from django.urls import path

from securepay.api import (
    schema,  # noqa: F401 - importing it registers the API-key scheme for the OpenAPI schema
    views,
)

urlpatterns = [
    path("sessions/", views.SessionListCreateView.as_view(), name="api-session-list"),
    path("sessions/<uuid:session_id>/", views.SessionDetailView.as_view(), name="api-session-detail"),
    path("sessions/<uuid:session_id>/end/", views.SessionEndView.as_view(), name="api-session-end"),
]
