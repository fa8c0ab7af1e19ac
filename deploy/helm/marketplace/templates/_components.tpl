{{/*
The shapes the four components share. Each template file renders one object by calling these with
(dict "root" $ "component" "<name>"); the component's values are .Values.<component>.
*/}}

{{/* The Deployment of a component: web and gateway serve HTTP on 8000, worker and beat run Celery. */}}
{{- define "marketplace.deployment" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $values := index $root.Values $component }}
{{- $http := has $component (list "web" "gateway") }}
{{- $labels := dict "root" $root "component" $component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "marketplace.componentName" $labels }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "marketplace.labels" $labels | nindent 4 }}
spec:
  {{- if not (and $http $values.autoscaling.enabled) }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "marketplace.selectorLabels" $labels | nindent 6 }}
  {{- if eq $component "beat" }}
  strategy:
    # Never two beats at once: each would queue every periodic task.
    type: Recreate
  {{- else if $http }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # Keep full capacity during a rollout: new pods are added before old ones go.
      maxUnavailable: 0
      maxSurge: 25%
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "marketplace.labels" $labels | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "marketplace.checksums" $root | nindent 8 }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- if eq $component "worker" }}
      serviceAccountName: {{ include "marketplace.serviceAccountName.worker" $root }}
      # The worker is the one component that calls the Kubernetes API (the serving backend).
      automountServiceAccountToken: true
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $component }}
          image: {{ include "marketplace.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["entrypoint"]
          args: [{{ $component | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "marketplace.componentName" (dict "root" $root "component" "config") }}
          env:
            {{- include "marketplace.env" (dict "root" $root "http" $http) | nindent 12 }}
            {{- if $http }}
            - name: WEB_CONCURRENCY
              value: {{ $values.workers | int64 | quote }}
            # Several gunicorn workers share /metrics through per-process files (reset at start).
            - name: PROMETHEUS_MULTIPROC_DIR
              value: /tmp/prometheus
            {{- end }}
            {{- if eq $component "worker" }}
            - name: WORKER_CONCURRENCY
              value: {{ $values.concurrency | int64 | quote }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if $http }}
          ports:
            - name: http
              containerPort: 8000
              protocol: TCP
          startupProbe:
            tcpSocket:
              port: http
            {{- toYaml $values.probes.startup | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $values.probes.readiness | nindent 12 }}
          livenessProbe:
            tcpSocket:
              port: http
            {{- toYaml $values.probes.liveness | nindent 12 }}
          {{- if gt (int $values.preStopDelaySeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $values.preStopDelaySeconds | int64 | quote }}]
          {{- end }}
          {{- else if $values.livenessProbe }}
          livenessProbe:
            {{- toYaml $values.livenessProbe | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "marketplace.volumeMounts" $root | nindent 12 }}
            {{- if has $component (list "web" "worker") }}
            {{- range $index, $volume := $root.Values.serving.customModelVolumes }}
            - name: custom-models-{{ $index }}
              mountPath: {{ $volume.path }}
              readOnly: true
            {{- end }}
            {{- end }}
      volumes:
        {{- include "marketplace.secretsVolume" (dict "root" $root "secretName" (include "marketplace.componentName" (dict "root" $root "component" "secrets")) "http" $http) | nindent 8 }}
        - name: tmp
          emptyDir: {}
        {{- if has $component (list "web" "worker") }}
        {{- range $index, $volume := $root.Values.serving.customModelVolumes }}
        - name: custom-models-{{ $index }}
          persistentVolumeClaim:
            claimName: {{ $volume.claim }}
            readOnly: true
        {{- end }}
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range . }}
        {{- $constraint := deepCopy . }}
        {{- if not $constraint.labelSelector }}
        {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "marketplace.selectorLabels" $labels | fromYaml)) }}
        {{- end }}
        - {{- toYaml $constraint | nindent 10 }}
        {{- end }}
      {{- end }}
{{- end }}

{{/* The ClusterIP (or other) Service of web or gateway. */}}
{{- define "marketplace.service" -}}
{{- $values := index .root.Values .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "marketplace.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "marketplace.labels" . | nindent 4 }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "marketplace.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.service.port }}
      targetPort: http
      protocol: TCP
{{- end }}

{{/* A CPU HorizontalPodAutoscaler for web or gateway. */}}
{{- define "marketplace.hpa" -}}
{{- $autoscaling := (index .root.Values .component).autoscaling }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "marketplace.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "marketplace.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "marketplace.componentName" . }}
  minReplicas: {{ $autoscaling.minReplicas }}
  maxReplicas: {{ $autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $autoscaling.targetCPUUtilizationPercentage }}
{{- end }}

{{/* The PodDisruptionBudget of a component. */}}
{{- define "marketplace.pdb" -}}
{{- $budget := (index .root.Values .component).podDisruptionBudget }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "marketplace.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "marketplace.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $budget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "marketplace.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* A prometheus-operator ServiceMonitor scraping /metrics of web or gateway. */}}
{{- define "marketplace.serviceMonitor" -}}
{{- $monitor := .root.Values.serviceMonitor }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "marketplace.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "marketplace.labels" . | nindent 4 }}
    {{- with $monitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "marketplace.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      interval: {{ $monitor.interval }}
      scrapeTimeout: {{ $monitor.scrapeTimeout }}
      # /metrics names every tenant's deployments: it answers only with this token.
      {{- $token := include "marketplace.metricsTokenRef" .root | fromYaml }}
      bearerTokenSecret:
        name: {{ $token.secret }}
        key: {{ $token.key }}
{{- end }}
