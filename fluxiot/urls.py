from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from fluxiot import views

api_v1 = [
    path("auth/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("", include("transport.api.urls")),
    path("", include("telemetry.api.urls")),
    path("", include("control.api.urls")),
    path("", include("rules.api.urls")),
    path("", include("alarms.api.urls")),
    path("", include("control.scenes.api.urls")),
    path("", include("devices.api.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),
]

handler400 = "fluxiot.views.handler400"
handler404 = "fluxiot.views.handler404"
handler500 = "fluxiot.views.handler500"
