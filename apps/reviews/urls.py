from apps.reviews.views import approvals, queues

app_name = "reviews"

urlpatterns = [*approvals.urlpatterns, *queues.urlpatterns]
