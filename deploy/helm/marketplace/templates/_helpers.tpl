{{/*
Names. Kubernetes names and label values are at most 63 characters. The base is cut first, so that
"<base>-<component>" fits whole and two components never end up with the same truncated name.
*/}}
{{- define "marketplace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "marketplace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", within 63 characters: call with (dict "root" $ "component" "web"). */}}
{{- define "marketplace.componentName" -}}
{{- $base := include "marketplace.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "marketplace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "web"). */}}
{{- define "marketplace.labels" -}}
helm.sh/chart: {{ include "marketplace.chart" .root }}
{{ include "marketplace.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: model-marketplace
{{- end }}

{{/* The labels a component's Service, PodDisruptionBudget and ServiceMonitor select its pods by. */}}
{{- define "marketplace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "marketplace.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "marketplace.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the worker creates model deployments (KUBERNETES_NAMESPACE). */}}
{{- define "marketplace.servingNamespace" -}}
{{- .Values.serving.namespace | default .Release.Namespace }}
{{- end }}

{{- define "marketplace.serviceAccountName.worker" -}}
{{- if .Values.worker.serviceAccount.create }}
{{- .Values.worker.serviceAccount.name | default (include "marketplace.componentName" (dict "root" . "component" "worker")) }}
{{- else }}
{{- .Values.worker.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "marketplace.huggingfaceTokenSecret" -}}
{{- if .Values.secrets.huggingfaceToken.value }}
{{- include "marketplace.componentName" (dict "root" . "component" "huggingface-token") }}
{{- else }}
{{- .Values.secrets.huggingfaceToken.existingSecret }}
{{- end }}
{{- end }}

{{/* ALLOWED_HOSTS: the configured hosts, the Ingress hosts, the Services' in-cluster names and localhost.
Each pod appends its own IP (see marketplace.env), since probes and Prometheus address pods by IP. */}}
{{- define "marketplace.allowedHosts" -}}
{{- $hosts := list }}
{{- range .Values.config.allowedHosts }}{{ $hosts = append $hosts . }}{{ end }}
{{- if .Values.ingress.enabled }}
{{- range .Values.ingress.hosts }}{{ $hosts = append $hosts . }}{{ end }}
{{- end }}
{{- $components := list "web" }}
{{- if .Values.gateway.enabled }}{{ $components = append $components "gateway" }}{{ end }}
{{- range $components }}
{{- $service := include "marketplace.componentName" (dict "root" $ "component" .) }}
{{- $hosts = append $hosts $service }}
{{- $hosts = append $hosts (printf "%s.%s" $service $.Release.Namespace) }}
{{- $hosts = append $hosts (printf "%s.%s.svc" $service $.Release.Namespace) }}
{{- $hosts = append $hosts (printf "%s.%s.svc.%s" $service $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- $hosts = concat $hosts (list "localhost" "127.0.0.1" "[::1]") }}
{{- $hosts | uniq | join "," }}
{{- end }}

{{/* CSRF_TRUSTED_ORIGINS: the configured origins and https://<host> of every Ingress host with TLS. Behind
a TLS-terminating Ingress the pods see plain HTTP, so Django cannot match an https Origin by itself. */}}
{{- define "marketplace.csrfTrustedOrigins" -}}
{{- $origins := list }}
{{- range .Values.config.csrfTrustedOrigins }}{{ $origins = append $origins . }}{{ end }}
{{- if .Values.ingress.enabled }}
{{- range .Values.ingress.tls }}
{{- range .hosts }}{{ $origins = append $origins (printf "https://%s" .) }}{{ end }}
{{- end }}
{{- end }}
{{- $origins | uniq | join "," }}
{{- end }}

{{/* Where people and apps reach the platform, for the UI's snippets: the Ingress's first TLS host over
https, else its first host over http; empty without an Ingress (the UI then uses the request's address). */}}
{{- define "marketplace.publicUrl" -}}
{{- if .Values.ingress.enabled }}
{{- $tls := first (default (list) .Values.ingress.tls) }}
{{- if and $tls $tls.hosts }}{{ printf "https://%s" (first $tls.hosts) }}
{{- else if .Values.ingress.hosts }}{{ printf "http://%s" (first .Values.ingress.hosts) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The non-secret settings (README.md, "Configuration") as a YAML map of strings: the ConfigMap's data,
and the migrations Job's environment (the hook runs before the ConfigMap exists). */}}
{{- define "marketplace.settings" -}}
SERVING_BACKEND: kubernetes
KUBERNETES_NAMESPACE: {{ include "marketplace.servingNamespace" . | quote }}
VLLM_IMAGE: {{ .Values.serving.vllmImage | quote }}
TRAINING_IMAGE: {{ .Values.serving.trainingImage | quote }}
TRAINING_DEADLINE_SECONDS: {{ .Values.serving.trainingDeadlineSeconds | quote }}
KEDA_ENABLED: {{ ternary "True" "False" .Values.serving.kedaEnabled | quote }}
PROMETHEUS_URL: {{ .Values.serving.prometheusUrl | quote }}
MODEL_CACHE_PVC: {{ .Values.serving.modelCachePvc | quote }}
HF_TOKEN_SECRET: {{ include "marketplace.huggingfaceTokenSecret" . | quote }}
ENGINE_MEDIA_DOMAINS: {{ join "," .Values.serving.mediaDomains | quote }}
CUSTOM_MODEL_ROOTS: {{ join "," .Values.serving.customModelRoots | quote }}
{{- $volumeClaims := list }}
{{- range .Values.serving.customModelVolumes }}
{{- $volumeClaims = append $volumeClaims (printf "%s=%s" .path .claim) }}
{{- end }}
CUSTOM_MODEL_VOLUMES: {{ join "," $volumeClaims | quote }}
CUSTOM_MODEL_STORE_ENDPOINTS: {{ join "," .Values.serving.customModelStoreEndpoints | quote }}
NETWORK_POLICY_ENABLED: {{ ternary "True" "False" .Values.serving.networkPolicy.enabled | quote }}
GATEWAY_NAMESPACE: {{ .Release.Namespace | quote }}
GATEWAY_POD_LABELS: {{ printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (include "marketplace.name" .) (.Release.Name | trunc 63 | trimSuffix "-") | quote }}
PROMETHEUS_NAMESPACE: {{ .Values.serving.networkPolicy.prometheusNamespace | quote }}
PROMETHEUS_POD_LABELS: {{ include "marketplace.labelList" .Values.serving.networkPolicy.prometheusPodLabels | quote }}
ALLOWED_HOSTS: {{ include "marketplace.allowedHosts" . | quote }}
CSRF_TRUSTED_ORIGINS: {{ include "marketplace.csrfTrustedOrigins" . | quote }}
PUBLIC_URL: {{ include "marketplace.publicUrl" . | quote }}
SECURE_COOKIES: {{ ternary "True" "False" .Values.config.secureCookies | quote }}
SECURE_SSL_REDIRECT: {{ ternary "True" "False" .Values.config.https.redirect | quote }}
SECURE_HSTS_SECONDS: {{ .Values.config.https.hstsSeconds | int64 | quote }}
SECURE_HSTS_INCLUDE_SUBDOMAINS: {{ ternary "True" "False" .Values.config.https.hstsIncludeSubdomains | quote }}
SECURE_HSTS_PRELOAD: {{ ternary "True" "False" .Values.config.https.hstsPreload | quote }}
SECURE_PROXY_SSL_HEADER: {{ .Values.config.https.proxySslHeader | quote }}
FORWARDED_ALLOW_IPS: {{ .Values.config.https.forwardedAllowIps | quote }}
SIGN_IN_MAX_FAILURES: {{ .Values.config.signIn.maxFailures | int64 | quote }}
SIGN_IN_WINDOW_SECONDS: {{ .Values.config.signIn.windowSeconds | int64 | quote }}
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
API_PAGE_SIZE_MAX: {{ .Values.config.apiPageSizeMax | int64 | quote }}
DATABASE_CONN_MAX_AGE: {{ .Values.config.databaseConnMaxAge | int64 | quote }}
RECONCILE_INTERVAL_SECONDS: {{ .Values.config.reconcileIntervalSeconds | int64 | quote }}
USAGE_FLUSH_INTERVAL_SECONDS: {{ .Values.config.usageFlushIntervalSeconds | int64 | quote }}
INVOCATION_LOG_QUEUE_MAX: {{ .Values.config.invocationLog.queueMax | int64 | quote }}
INVOCATION_LOG_WRITE_INTERVAL_SECONDS: {{ .Values.config.invocationLog.writeIntervalSeconds | int64 | quote }}
INVOCATION_LOG_WINDOW_MINUTES: {{ .Values.config.invocationLog.windowMinutes | int64 | quote }}
GATEWAY_CACHE_SECONDS: {{ .Values.config.gateway.cacheSeconds | int64 | quote }}
GATEWAY_CONNECT_TIMEOUT: {{ .Values.config.gateway.connectTimeout | int64 | quote }}
GATEWAY_READ_TIMEOUT: {{ .Values.config.gateway.readTimeout | int64 | quote }}
GATEWAY_MAX_BODY_BYTES: {{ .Values.config.gateway.maxBodyBytes | int64 | quote }}
GATEWAY_MAX_MEDIA_BYTES: {{ .Values.config.gateway.maxMediaBytes | int64 | quote }}
GATEWAY_SPOOL_DIR: {{ .Values.config.gateway.spoolDir | quote }}
GATEWAY_AUTH_FAILURES_PER_MINUTE: {{ .Values.config.gateway.authFailuresPerMinute | int64 | quote }}
GATEWAY_ROUTER_MAX_QUEUE_PER_REPLICA: {{ .Values.config.gateway.routerMaxQueuePerReplica | int64 | quote }}
BUDGET_CHECK_INTERVAL_SECONDS: {{ .Values.config.budgets.checkIntervalSeconds | int64 | quote }}
BUDGET_WEBHOOK_TIMEOUT_SECONDS: {{ .Values.config.budgets.webhookTimeoutSeconds | int64 | quote }}
BUDGET_WEBHOOK_ATTEMPTS: {{ .Values.config.budgets.webhookAttempts | int64 | quote }}
BUDGET_WEBHOOK_BACKOFF_SECONDS: {{ .Values.config.budgets.webhookBackoffSeconds | int64 | quote }}
BUDGET_WEBHOOK_PRIVATE_ADDRESSES: {{ ternary "True" "False" .Values.config.budgets.webhookPrivateAddresses | quote }}
IDLE_AFTER_HOURS: {{ .Values.config.idleAfterHours | int64 | quote }}
OBJECT_STORE_BUCKET: {{ .Values.config.objectStore.bucket | quote }}
OBJECT_STORE_ENDPOINT_URL: {{ .Values.config.objectStore.endpointUrl | quote }}
OBJECT_STORE_REGION: {{ .Values.config.objectStore.region | quote }}
OBJECT_STORE_ACCESS_KEY_ID: {{ .Values.config.objectStore.accessKeyId | quote }}
{{- range $name, $value := .Values.config.extraEnv }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* A map of labels as `key=value,key=value` (sorted by key), the form the *_POD_LABELS settings read. */}}
{{- define "marketplace.labelList" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}{{ $pairs = append $pairs (printf "%s=%s" $key $value) }}{{ end }}
{{- join "," $pairs }}
{{- end }}

{{/* The three secrets: (name, key in the Secret, variable). The chart's own Secret uses the variable as key. */}}
{{- define "marketplace.secretRefs" -}}
{{- $ownSecret := .secretName }}
{{- range $variable, $field := dict "SECRET_KEY" "secretKey" "DATABASE_URL" "databaseUrl" "REDIS_URL" "redisUrl" }}
{{- $secret := index $.root.Values.secrets $field }}
- variable: {{ $variable }}
  secret: {{ $secret.existingSecret | default $ownSecret }}
  key: {{ ternary $secret.key $variable (not (empty $secret.existingSecret)) }}
{{- end }}
{{- $store := .root.Values.secrets.objectStoreSecretAccessKey }}
{{- if or $store.value $store.existingSecret }}
- variable: OBJECT_STORE_SECRET_ACCESS_KEY
  secret: {{ $store.existingSecret | default $ownSecret }}
  key: {{ ternary $store.key "OBJECT_STORE_SECRET_ACCESS_KEY" (not (empty $store.existingSecret)) }}
{{- end }}
{{- $fernet := .root.Values.secrets.secretsEncryptionKey }}
{{- if or $fernet.value $fernet.existingSecret }}
- variable: SECRETS_ENCRYPTION_KEY
  secret: {{ $fernet.existingSecret | default $ownSecret }}
  key: {{ ternary $fernet.key "SECRETS_ENCRYPTION_KEY" (not (empty $fernet.existingSecret)) }}
{{- end }}
{{- end }}

{{/* True when at least one of the three secrets is given as a value, so the chart must store it. */}}
{{- define "marketplace.hasSecretValues" -}}
{{- $s := .Values.secrets }}
{{- if or $s.secretKey.value $s.databaseUrl.value $s.redisUrl.value $s.objectStoreSecretAccessKey.value $s.secretsEncryptionKey.value }}true{{ end }}
{{- end }}

{{/* The metrics token, when configured: (secret, key) of METRICS_TOKEN, as YAML; empty without one. Only
web and gateway (which serve /metrics) and the ServiceMonitors (which send it) read it. */}}
{{- define "marketplace.metricsTokenRef" -}}
{{- $token := .Values.secrets.metricsToken }}
{{- if $token.existingSecret }}
secret: {{ $token.existingSecret }}
key: {{ $token.key }}
{{- else if $token.value }}
secret: {{ include "marketplace.componentName" (dict "root" . "component" "secrets") }}
key: METRICS_TOKEN
{{- end }}
{{- end }}

{{/* The Secret data of the values given inline (not the metrics token: see marketplace.metricsTokenData). */}}
{{- define "marketplace.secretData" -}}
{{- $s := .Values.secrets }}
{{- if $s.secretKey.value }}
SECRET_KEY: {{ $s.secretKey.value | b64enc | quote }}
{{- end }}
{{- if $s.databaseUrl.value }}
DATABASE_URL: {{ $s.databaseUrl.value | b64enc | quote }}
{{- end }}
{{- if $s.redisUrl.value }}
REDIS_URL: {{ $s.redisUrl.value | b64enc | quote }}
{{- end }}
{{- if $s.objectStoreSecretAccessKey.value }}
OBJECT_STORE_SECRET_ACCESS_KEY: {{ $s.objectStoreSecretAccessKey.value | b64enc | quote }}
{{- end }}
{{- if $s.secretsEncryptionKey.value }}
SECRETS_ENCRYPTION_KEY: {{ $s.secretsEncryptionKey.value | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The metrics token given inline, for the release's Secret only (the migrations Job needs none). */}}
{{- define "marketplace.metricsTokenData" -}}
{{- if .Values.secrets.metricsToken.value }}
METRICS_TOKEN: {{ .Values.secrets.metricsToken.value | b64enc | quote }}
{{- end }}
{{- end }}

{{/* A projected volume of the three secrets, one file per variable, and for web and gateway the metrics
token; call with (dict "root" $ "secretName" <the chart's Secret holding inline values> "http" bool). */}}
{{- define "marketplace.secretsVolume" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- range (include "marketplace.secretRefs" . | fromYamlArray) }}
      - secret:
          name: {{ .secret }}
          items:
            - key: {{ .key }}
              path: {{ .variable }}
      {{- end }}
      {{- $metrics := include "marketplace.metricsTokenRef" .root | fromYaml }}
      {{- if and .http $metrics }}
      - secret:
          name: {{ $metrics.secret }}
          items:
            - key: {{ $metrics.key }}
              path: METRICS_TOKEN
      {{- end }}
{{- end }}

{{/* Environment of every container: the settings' files and the pod's own IP; call with
(dict "root" $ "http" true|false). `$(ALLOWED_HOSTS)` expands to the ConfigMap's value. */}}
{{- define "marketplace.env" -}}
- name: SECRET_KEY_FILE
  value: /var/run/secrets/marketplace/SECRET_KEY
- name: DATABASE_URL_FILE
  value: /var/run/secrets/marketplace/DATABASE_URL
- name: REDIS_URL_FILE
  value: /var/run/secrets/marketplace/REDIS_URL
{{- $store := .root.Values.secrets.objectStoreSecretAccessKey }}
{{- if or $store.value $store.existingSecret }}
- name: OBJECT_STORE_SECRET_ACCESS_KEY_FILE
  value: /var/run/secrets/marketplace/OBJECT_STORE_SECRET_ACCESS_KEY
{{- end }}
{{- $fernet := .root.Values.secrets.secretsEncryptionKey }}
{{- if or $fernet.value $fernet.existingSecret }}
- name: SECRETS_ENCRYPTION_KEY_FILE
  value: /var/run/secrets/marketplace/SECRETS_ENCRYPTION_KEY
{{- end }}
{{- if .http }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: ALLOWED_HOSTS
  value: "$(ALLOWED_HOSTS),$(POD_IP)"
{{- if include "marketplace.metricsTokenRef" .root }}
- name: METRICS_TOKEN_FILE
  value: /var/run/secrets/marketplace/METRICS_TOKEN
{{- end }}
{{- end }}
{{- end }}

{{- define "marketplace.volumeMounts" -}}
- name: secrets
  mountPath: /var/run/secrets/marketplace
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Annotations that roll the pods when the settings or the secrets change. */}}
{{- define "marketplace.checksums" -}}
checksum/config: {{ include "marketplace.settings" . | sha256sum }}
checksum/secret: {{ printf "%s%s%s%s" (include "marketplace.secretData" .) (include "marketplace.secretRefs" (dict "root" . "secretName" "")) (include "marketplace.metricsTokenData" .) (include "marketplace.metricsTokenRef" .) | sha256sum }}
{{- end }}

{{/* Checks the schema cannot express; included by the ConfigMap, which every release renders. */}}
{{- define "marketplace.validate" -}}
{{- range $field := list "secretKey" "databaseUrl" "redisUrl" "objectStoreSecretAccessKey" "secretsEncryptionKey" }}
{{- $secret := index $.Values.secrets $field }}
{{- if and $secret.value $secret.existingSecret }}
{{- fail (printf "secrets.%s: give either value or existingSecret, not both" $field) }}
{{- end }}
{{- end }}
{{- $metrics := .Values.secrets.metricsToken }}
{{- if and $metrics.value $metrics.existingSecret }}
{{- fail "secrets.metricsToken: give either value or existingSecret, not both" }}
{{- end }}
{{- if and $metrics.value (lt (len $metrics.value) 24) }}
{{- fail "secrets.metricsToken.value: at least 24 characters (e.g. `openssl rand -hex 32`)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (include "marketplace.metricsTokenRef" .)) }}
{{- fail "serviceMonitor.enabled needs secrets.metricsToken (a value or an existingSecret): /metrics answers only callers on the pod itself without it, and Prometheus sends the token" }}
{{- end }}
{{- if eq (toString .Values.image.tag) "latest" }}
{{- fail (printf "image.tag: `latest` is refused, pin a build (empty means the chart's appVersion, %s)" .Chart.AppVersion) }}
{{- end }}
{{- if hasSuffix ":latest" .Values.serving.vllmImage }}
{{- fail "serving.vllmImage: `latest` is refused, pin the engine's version (e.g. vllm/vllm-openai:v0.33.0)" }}
{{- end }}
{{- if hasSuffix ":latest" .Values.serving.trainingImage }}
{{- fail "serving.trainingImage: `latest` is refused, pin the trainer's build (the engine's version)" }}
{{- end }}
{{- if eq (toString .Values.tests.image.tag) "latest" }}
{{- fail "tests.image.tag: `latest` is refused, pin a version" }}
{{- end }}
{{- range $component := list "web" "gateway" }}
{{- $autoscaling := (index $.Values $component).autoscaling }}
{{- if gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" $component (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The worker's cluster-wide node reader: "<release namespace>-<fullname>-worker-nodes", within 63
characters (cluster-scoped names are shared by every namespace's releases). */}}
{{- define "marketplace.nodeReaderName" -}}
{{- $base := printf "%s-%s" .Release.Namespace (include "marketplace.fullname" .) | trunc 49 | trimSuffix "-" }}
{{- printf "%s-worker-nodes" $base }}
{{- end }}
