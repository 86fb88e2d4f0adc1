"""Factories for every model the tests need."""

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from devices.choices import DeviceType, Protocol
from devices.models import Device, DeviceGroup


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.set(Group.objects.filter(name__in=extracted))


class DeviceGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeviceGroup

    name = factory.Sequence(lambda n: f"group-{n}")
    parent = None


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    id = factory.Sequence(lambda n: f"device-{n:05d}")
    name = factory.Sequence(lambda n: f"Device {n}")
    device_type = DeviceType.SENSOR
    protocol = Protocol.MQTT
    tags = factory.LazyFunction(list)
    metadata = factory.LazyFunction(dict)
