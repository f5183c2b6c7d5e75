from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from securepay import launch, views
from tenants.views import LoginView

api_v1 = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("securepay.api.urls")),
    path("calls/", include("securepay.calls_urls")),
    path("", include("gateways.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("keepalive", views.keepalive, name="keepalive"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("pay/launch/", launch.launch_session, name="session-launch"),
    path("pay/", include("securepay.agent_urls")),
]

if settings.KEYPAD_SIMULATOR_ENABLED:
    # A stand-in for the caller's phone and the telephony: never routed in production.
    urlpatterns.append(path("simulator/", include("securepay.simulator_urls")))

admin.site.site_header = "SecurePay administration"
admin.site.site_title = "SecurePay"
