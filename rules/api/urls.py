from rest_framework.routers import SimpleRouter

from rules.api import views

# A SimpleRouter: the API root view comes from the registry's DefaultRouter.
router = SimpleRouter()
router.register("rules", views.RuleViewSet, basename="rule")
router.register("plugins", views.PluginViewSet, basename="plugin")

urlpatterns = router.urls
