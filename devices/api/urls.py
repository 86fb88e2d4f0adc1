from rest_framework.routers import DefaultRouter

from devices.api import views

router = DefaultRouter()
router.register("devices", views.DeviceViewSet, basename="device")
router.register("device-groups", views.DeviceGroupViewSet, basename="devicegroup")

urlpatterns = router.urls
