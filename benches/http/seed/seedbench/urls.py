from django.urls import path

from seedbench import views

urlpatterns = [
    path("cart", views.cart),
    path("cart/add", views.add),
]
