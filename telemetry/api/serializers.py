from rest_framework import serializers


class PointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField()
    value = serializers.JSONField()


class LatestValuesSerializer(serializers.Serializer):
    device = serializers.CharField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    values = serializers.DictField(child=PointSerializer(), help_text="Newest value of each key.")


class RangeQuerySerializer(serializers.Serializer):
    device = serializers.CharField(max_length=64)
    key = serializers.CharField(max_length=128)
    start = serializers.DateTimeField(required=False, help_text="Inclusive; default: 24 hours before end.")
    end = serializers.DateTimeField(required=False, help_text="Exclusive; default: now.")
    limit = serializers.IntegerField(min_value=1, max_value=10_000, default=1000)

    def validate(self, attrs: dict) -> dict:
        if "start" in attrs and "end" in attrs and attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"end": "end must be after start."})
        return attrs


class RangeResultSerializer(serializers.Serializer):
    device = serializers.CharField()
    key = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    points = PointSerializer(many=True)
    truncated = serializers.BooleanField(help_text="More points lie in the range than `limit`.")
