"""Values the fixtures and the tests share."""

BOT_TOKEN = "100001:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQr"
OTHER_BOT_TOKEN = "100002:ZZyyXXwwVVuuTTssRRqqPPooNNmmLLkkJJi"
ADMIN_ID = 777
API_TOKEN = "test-api-token-123"
