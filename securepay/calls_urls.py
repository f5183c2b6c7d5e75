"""Call control routes, included under /api/v1/calls/."""

from django.urls import path

from securepay import calls_api

urlpatterns = [
    path("", calls_api.CallListCreateView.as_view(), name="api-call-list"),
    path("<uuid:call_id>/", calls_api.CallDetailView.as_view(), name="api-call-detail"),
    path("<uuid:call_id>/link/", calls_api.CallLinkView.as_view(), name="api-call-link"),
    path("<uuid:call_id>/events/", calls_api.CallEventView.as_view(), name="api-call-events"),
    path("<uuid:call_id>/supervisors/", calls_api.CallSupervisorListView.as_view(), name="api-call-supervisors"),
    path(
        "<uuid:call_id>/supervisors/<slug:name>/",
        calls_api.CallSupervisorDetailView.as_view(),
        name="api-call-supervisor-detail",
    ),
]
