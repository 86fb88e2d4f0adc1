from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """Page-number pagination; clients choose ``page_size`` up to 1,000."""

    page_size_query_param = "page_size"
    max_page_size = 1000
