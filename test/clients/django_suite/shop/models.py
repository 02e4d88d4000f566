from django.db import models


class Account(models.Model):
    email = models.EmailField(unique=True)


class Note(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="notes")
    body = models.TextField()
