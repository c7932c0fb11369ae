#!/usr/bin/env bash
# Attach a dead-letter topic to the Pub/Sub subscription that Eventarc created for a trigger.
# Run by terraform (dead_letter.tf) or by hand:
#
#   PROJECT=my-project \
#   TRIGGER="$(cd terraform && terraform output -raw breach_counter_trigger)" \
#   DEAD_LETTER_TOPIC=projects/my-project/topics/canary-alerts-dead-letter \
#   MAX_DELIVERY_ATTEMPTS=10 \
#   PUBSUB_SERVICE_AGENT="serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com" \
#   bash terraform/scripts/attach_dead_letter.sh
set -euo pipefail

: "${PROJECT:?PROJECT is required}"
: "${TRIGGER:?TRIGGER (projects/P/locations/L/triggers/T) is required}"
: "${DEAD_LETTER_TOPIC:?DEAD_LETTER_TOPIC (projects/P/topics/T) is required}"
: "${MAX_DELIVERY_ATTEMPTS:?MAX_DELIVERY_ATTEMPTS (5-100) is required}"
: "${PUBSUB_SERVICE_AGENT:?PUBSUB_SERVICE_AGENT (serviceAccount:service-N@gcp-sa-pubsub...) is required}"

subscription=""
for attempt in 1 2 3 4 5 6; do
  subscription="$(gcloud eventarc triggers describe "$TRIGGER" --project="$PROJECT" \
    --format='value(transport.pubsub.subscription)')"
  [[ -n "$subscription" ]] && break
  echo "trigger $TRIGGER has no subscription yet (attempt $attempt), waiting" >&2
  sleep 10
done
if [[ -z "$subscription" ]]; then
  echo "error: no Pub/Sub subscription found for $TRIGGER" >&2
  exit 1
fi

gcloud pubsub subscriptions update "$subscription" --project="$PROJECT" \
  --dead-letter-topic="$DEAD_LETTER_TOPIC" \
  --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" \
  --quiet

gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project="$PROJECT" \
  --member="$PUBSUB_SERVICE_AGENT" \
  --role="roles/pubsub.subscriber" \
  --quiet >/dev/null

echo "dead letter: $subscription -> $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS attempts"
