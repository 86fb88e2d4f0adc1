from django.urls import path

from control.api import views

device_commands = views.DeviceCommandViewSet.as_view({"get": "list", "post": "create"})
batch_create = views.CommandBatchViewSet.as_view({"post": "create"})
batch_list = views.CommandBatchViewSet.as_view({"get": "list"})
batch_detail = views.CommandBatchViewSet.as_view({"get": "retrieve"})
command_list = views.CommandViewSet.as_view({"get": "list"})
command_detail = views.CommandViewSet.as_view({"get": "retrieve", "delete": "destroy"})
command_types = views.CommandTypeViewSet.as_view({"get": "list"})

# Before the registry's routes: "devices/batch/commands/" is not device "batch"'s commands.
urlpatterns = [
    path("devices/batch/commands/", batch_create, name="command-batch-create"),
    path("devices/<str:device_id>/commands/", device_commands, name="device-commands"),
    path("commands/", command_list, name="command-list"),
    path("commands/<uuid:pk>/", command_detail, name="command-detail"),
    path("command-batches/", batch_list, name="commandbatch-list"),
    path("command-batches/<uuid:pk>/", batch_detail, name="commandbatch-detail"),
    path("command-types/", command_types, name="command-types"),
]
