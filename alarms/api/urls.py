from rest_framework.routers import SimpleRouter

from alarms.api import views

# A SimpleRouter: the API root view comes from the registry's DefaultRouter.
router = SimpleRouter()
router.register("alarms", views.AlarmViewSet, basename="alarm")
router.register("notification-channels", views.NotificationChannelViewSet, basename="notificationchannel")
router.register("notification-rules", views.NotificationRuleViewSet, basename="notificationrule")
router.register("notification-deliveries", views.NotificationDeliveryViewSet, basename="notificationdelivery")

urlpatterns = router.urls
