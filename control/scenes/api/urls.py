from rest_framework.routers import SimpleRouter

from control.scenes.api import views

# A SimpleRouter: the API root view comes from the registry's DefaultRouter.
router = SimpleRouter()
router.register("scenes", views.SceneViewSet, basename="scene")
router.register("scene-executions", views.SceneExecutionViewSet, basename="sceneexecution")

urlpatterns = router.urls
