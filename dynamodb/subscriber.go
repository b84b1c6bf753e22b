package dynamodb

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

const licenseKeyPrefix = "license:"

// subscriberItem maps a subscriber to the sample stack's item format plus
// mpsaas's attributes.
func subscriberItem(s *mpsaas.Subscriber, now time.Time) (map[string]types.AttributeValue, error) {
	ents, err := json.Marshal(s.Entitlements)
	if err != nil {
		return nil, err
	}
	item := map[string]types.AttributeValue{
		"customerIdentifier": sv(s.Key),
		// The sample stack's attributes.
		"successfully_subscribed":    bv(s.Status == mpsaas.StatusActive || s.Status == mpsaas.StatusUnsubscribePending),
		"subscription_expired":       bv(s.Status == mpsaas.StatusCancelled || s.Status == mpsaas.StatusFailed || s.Access == mpsaas.AccessRevoked),
		"is_free_trial_term_present": bv(s.FreeTrial),
		// mpsaas's.
		"status":                sv(string(s.Status)),
		"entitlements":          sv(string(ents)),
		"entitlementsCheckedAt": nv(timeN(s.EntitlementsCheckedAt)),
		"registeredAt":          nv(timeN(s.RegisteredAt)),
		"lastEventAt":           nv(timeN(s.LastEventAt)),
		"finalWindowFrom":       nv(timeN(s.FinalWindowFrom)),
		"accessVersion":         nv(int64(s.AccessVersion)),
		"version":               nv(int64(s.Version + 1)),
		"createdAt":             nv(timeN(s.CreatedAt)),
		"updatedAt":             nv(timeN(now)),
	}
	putS(item, "productCode", s.ProductCode)
	putS(item, "companyName", s.CompanyName)
	putS(item, "contactPerson", s.ContactPerson)
	putS(item, "contactPhone", s.ContactPhone)
	putS(item, "contactEmail", s.ContactEmail)
	putS(item, "CustomerAWSAccountId", s.CustomerAWSAccountID)
	putS(item, "entitlement", s.EntitlementsRaw)
	putS(item, "licenseArn", s.LicenseArn)
	putS(item, "licenseId", s.LicenseID)
	putS(item, "offerId", s.OfferID)
	putS(item, "offerType", s.OfferType)
	putS(item, "linkedAccountId", s.LinkedAccountID)
	putS(item, "claimId", s.ClaimID)
	putS(item, "access", string(s.Access))
	putS(item, "accessFingerprint", s.AccessFingerprint)
	if slices.Contains(mpsaas.EndingStatuses, s.Status) {
		item["ending"] = sv("1") // in the ending index (EndingSubscribers)
	}
	if len(s.EntitlementHistory) > 0 {
		// At most 64 periods of ~150 bytes: well under the 400 KB item limit.
		h, err := json.Marshal(s.EntitlementHistory)
		if err != nil {
			return nil, err
		}
		item["entitlementHistory"] = sv(string(h))
	}
	if !s.CreatedAt.IsZero() {
		item["created"] = sv(s.CreatedAt.Format(time.RFC3339))
	}
	return item, nil
}

func subscriberFrom(item map[string]types.AttributeValue) (*mpsaas.Subscriber, error) {
	key := getS(item, "customerIdentifier")
	s := &mpsaas.Subscriber{
		Key: key,
		Identity: mpsaas.Identity{
			CustomerAWSAccountID: getS(item, "CustomerAWSAccountId"),
			LicenseID:            getS(item, "licenseId"),
			ProductCode:          getS(item, "productCode"),
		},
		LicenseArn: getS(item, "licenseArn"),
		Contact: mpsaas.Contact{
			CompanyName: getS(item, "companyName"), ContactPerson: getS(item, "contactPerson"),
			ContactPhone: getS(item, "contactPhone"), ContactEmail: getS(item, "contactEmail"),
		},
		RegisteredAt:    fromN(getN(item, "registeredAt")),
		OfferType:       getS(item, "offerType"),
		LinkedAccountID: getS(item, "linkedAccountId"),
		ClaimID:         getS(item, "claimId"),
		State: mpsaas.State{
			Status: mpsaas.Status(getS(item, "status")), FreeTrial: getB(item, "is_free_trial_term_present"),
			OfferID: getS(item, "offerId"), LastEventAt: fromN(getN(item, "lastEventAt")),
			FinalWindowFrom: fromN(getN(item, "finalWindowFrom")),
		},
		EntitlementsRaw:       getS(item, "entitlement"),
		EntitlementsCheckedAt: fromN(getN(item, "entitlementsCheckedAt")),
		Access:                mpsaas.Access(getS(item, "access")),
		AccessVersion:         int(getN(item, "accessVersion")),
		AccessFingerprint:     getS(item, "accessFingerprint"),
		CreatedAt:             fromN(getN(item, "createdAt")),
		UpdatedAt:             fromN(getN(item, "updatedAt")),
		Version:               int(getN(item, "version")),
	}
	if !strings.HasPrefix(key, licenseKeyPrefix) {
		s.CustomerIdentifier = key
	}
	if s.Status == "" {
		// An item written by the sample stack: derive the state from its flags.
		s.Status = mpsaas.StatusPending
		if getB(item, "successfully_subscribed") {
			s.Status = mpsaas.StatusActive
		}
		if getB(item, "subscription_expired") {
			s.Status = mpsaas.StatusCancelled
		}
	}
	if e := getS(item, "entitlements"); e != "" {
		if err := json.Unmarshal([]byte(e), &s.Entitlements); err != nil {
			return nil, fmt.Errorf("subscriber %s: decoding entitlements: %w", key, err)
		}
	}
	if h := getS(item, "entitlementHistory"); h != "" {
		if err := json.Unmarshal([]byte(h), &s.EntitlementHistory); err != nil {
			return nil, fmt.Errorf("subscriber %s: decoding entitlement history: %w", key, err)
		}
	}
	return s, nil
}

// GetSubscriber returns the subscriber stored under key.
func (s *Store) GetSubscriber(ctx context.Context, key string) (*mpsaas.Subscriber, error) {
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{
		TableName: aws.String(s.tables.Subscribers), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"customerIdentifier": sv(key)},
	})
	if err != nil {
		return nil, fmt.Errorf("get subscriber %s: %w", key, err)
	}
	if out.Item == nil {
		return nil, mpsaas.Errorf(mpsaas.ENOTFOUND, "subscriber %s not found", key)
	}
	return subscriberFrom(out.Item)
}

// FindSubscriber returns the subscriber sharing a CustomerIdentifier or LicenseID with id.
func (s *Store) FindSubscriber(ctx context.Context, id mpsaas.Identity) (*mpsaas.Subscriber, error) {
	if id.CustomerIdentifier != "" {
		sub, err := s.GetSubscriber(ctx, id.CustomerIdentifier)
		if mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
			return sub, err
		}
	}
	if id.LicenseID != "" {
		keys, err := s.queryKeys(ctx, s.tables.Subscribers, indexLicense, "licenseId", id.LicenseID, "customerIdentifier")
		if err != nil {
			return nil, err
		}
		if len(keys) > 0 {
			sort.Strings(keys)
			return s.GetSubscriber(ctx, keys[0])
		}
	}
	return nil, mpsaas.Errorf(mpsaas.ENOTFOUND, "subscriber not found")
}

// LinkedSubscribers returns the buyers linked to the seller's account id,
// newest first (an eventually consistent index: a link a moment old may
// be missing).
func (s *Store) LinkedSubscribers(ctx context.Context, accountID string) ([]*mpsaas.Subscriber, error) {
	if accountID == "" {
		return nil, nil
	}
	keys, err := s.queryKeys(ctx, s.tables.Subscribers, indexLinked, "linkedAccountId", accountID, "customerIdentifier")
	if err != nil {
		return nil, err
	}
	out := make([]*mpsaas.Subscriber, 0, len(keys))
	for _, k := range keys {
		sub, err := s.GetSubscriber(ctx, k)
		if mpsaas.ErrorCode(err) == mpsaas.ENOTFOUND {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// accountLinkKey is the item that remembers the seller's account an AWS
// account's buyer of a product was last linked to.
func accountLinkKey(awsAccount, product string) string {
	return "account:" + awsAccount + "#" + product
}

// LinkedAccountFor is the seller's account id the AWS account's last buyer
// of product was linked to ("" when none): a new agreement of the same
// buyer lands on the same account.
func (s *Store) LinkedAccountFor(ctx context.Context, awsAccount, product string) (string, error) {
	if awsAccount == "" || product == "" {
		return "", nil
	}
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.Subscribers), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"customerIdentifier": sv(accountLinkKey(awsAccount, product))}})
	if err != nil {
		return "", fmt.Errorf("linked account of %s: %w", awsAccount, err)
	}
	return getS(out.Item, "linkTo"), nil
}

// optionalAttributes are removed from the item when the subscriber has no value.
var optionalAttributes = []string{"productCode", "companyName", "contactPerson", "contactPhone", "contactEmail",
	"CustomerAWSAccountId", "entitlement", "licenseArn", "licenseId", "offerId", "offerType", "access", "accessFingerprint", "created", "linkedAccountId", "claimId",
	"ending"}

// outboxEntry is an access change waiting in the subscriber item until it
// is copied to the outbox table.
type outboxEntry struct {
	Channel        string `json:"c"`
	IdempotencyKey string `json:"k"`
	Payload        string `json:"p"`
}

// SaveSubscriber writes the subscriber if its version is unchanged. The
// access change is appended, in the same conditional write, to a list in the
// subscriber item (dynalite and some DynamoDB-compatible servers have no
// transactions); it is then copied to the outbox table. A crash in between
// leaves the list, which DueMessages copies first, so no change is lost.
func (s *Store) SaveSubscriber(ctx context.Context, sub *mpsaas.Subscriber, change *mpsaas.AccessChange, channels []string) error {
	now := s.Now()
	created := sub.CreatedAt
	if sub.Version == 0 && created.IsZero() {
		created = now
	}
	withCreated := *sub
	withCreated.CreatedAt = created
	item, err := subscriberItem(&withCreated, now)
	if err != nil {
		return err
	}
	delete(item, "customerIdentifier")
	names := map[string]string{"#pk": "customerIdentifier"}
	values := map[string]types.AttributeValue{}
	var sets, removes []string
	i := 0
	for name, v := range item {
		i++
		n, val := fmt.Sprintf("#a%d", i), fmt.Sprintf(":a%d", i)
		names[n], values[val] = name, v
		sets = append(sets, n+" = "+val)
	}
	for _, name := range optionalAttributes {
		if _, ok := item[name]; !ok {
			i++
			n := fmt.Sprintf("#a%d", i)
			names[n] = name
			removes = append(removes, n)
		}
	}
	if change != nil && len(channels) > 0 {
		payload, err := json.Marshal(change)
		if err != nil {
			return err
		}
		var entries []types.AttributeValue
		for _, ch := range channels {
			b, _ := json.Marshal(outboxEntry{Channel: ch, IdempotencyKey: change.IdempotencyKey, Payload: string(payload)})
			entries = append(entries, sv(string(b)))
		}
		names["#ob"], names["#obp"], names["#obs"] = "pendingOutbox", "outboxPending", "outboxSeq"
		values[":obnew"] = &types.AttributeValueMemberL{Value: entries}
		values[":obempty"] = &types.AttributeValueMemberL{Value: []types.AttributeValue{}}
		values[":one"], values[":zero"], values[":obflag"] = nv(1), nv(0), sv("1")
		sets = append(sets, "#ob = list_append(if_not_exists(#ob, :obempty), :obnew)", "#obp = :obflag", "#obs = if_not_exists(#obs, :zero) + :one")
	}
	in := &ddb.UpdateItemInput{
		TableName:                 aws.String(s.tables.Subscribers),
		Key:                       map[string]types.AttributeValue{"customerIdentifier": sv(sub.Key)},
		UpdateExpression:          aws.String("SET " + strings.Join(sets, ", ")),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	}
	if len(removes) > 0 {
		in.UpdateExpression = aws.String(*in.UpdateExpression + " REMOVE " + strings.Join(removes, ", "))
	}
	if sub.Version == 0 {
		in.ConditionExpression = aws.String("attribute_not_exists(#pk)")
	} else {
		in.ConditionExpression = aws.String("#pk = :key AND version = :v")
		values[":key"], values[":v"] = sv(sub.Key), nv(int64(sub.Version))
	}
	if _, err := s.client.UpdateItem(ctx, in); err != nil {
		if isConditionFailed(err) {
			if sub.Version == 0 {
				return mpsaas.Errorf(mpsaas.ECONFLICT, "subscriber %s already exists", sub.Key)
			}
			return mpsaas.Errorf(mpsaas.ECONFLICT, "subscriber %s was changed concurrently", sub.Key)
		}
		return fmt.Errorf("save subscriber %s: %w", sub.Key, err)
	}
	sub.CreatedAt = created
	sub.Version++
	sub.UpdatedAt = now
	if sub.LinkedAccountID != "" && sub.CustomerAWSAccountID != "" && sub.ProductCode != "" {
		// Remembered for the buyer's next agreement (LinkedAccountFor).
		// Best effort: the next save of the buyer writes it again.
		_, _ = s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.Subscribers), Item: map[string]types.AttributeValue{
			// Not "linkedAccountId": this item must stay out of that index.
			"customerIdentifier": sv(accountLinkKey(sub.CustomerAWSAccountID, sub.ProductCode)), "linkTo": sv(sub.LinkedAccountID),
			"subscriberKey": sv(sub.Key), "updatedAt": nv(timeN(now))}})
	}
	if change != nil && len(channels) > 0 {
		// Best effort now; DueMessages finishes it after a crash.
		if err := s.flushOutbox(ctx, sub.Key); err != nil {
			return nil //nolint:nilerr // the change is safe in the subscriber item
		}
	}
	return nil
}

// flushOutbox copies a subscriber's pending access changes to the outbox
// table (each once) and clears the list if nothing was appended meanwhile.
func (s *Store) flushOutbox(ctx context.Context, key string) error {
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{
		TableName: aws.String(s.tables.Subscribers), ConsistentRead: aws.Bool(true),
		Key:                      map[string]types.AttributeValue{"customerIdentifier": sv(key)},
		ProjectionExpression:     aws.String("#ob, #obs"),
		ExpressionAttributeNames: map[string]string{"#ob": "pendingOutbox", "#obs": "outboxSeq"},
	})
	if err != nil {
		return fmt.Errorf("read outbox of %s: %w", key, err)
	}
	list, _ := out.Item["pendingOutbox"].(*types.AttributeValueMemberL)
	if list == nil {
		return nil
	}
	now := s.Now()
	for _, v := range list.Value {
		str, _ := v.(*types.AttributeValueMemberS)
		if str == nil {
			continue
		}
		var e outboxEntry
		if err := json.Unmarshal([]byte(str.Value), &e); err != nil {
			return fmt.Errorf("outbox entry of %s: %w", key, err)
		}
		_, err := s.client.PutItem(ctx, &ddb.PutItemInput{
			TableName: aws.String(s.tables.Outbox),
			Item: map[string]types.AttributeValue{
				"id": sv(e.Channel + "#" + e.IdempotencyKey), "channel": sv(e.Channel), "idempotencyKey": sv(e.IdempotencyKey),
				"subscriberKey": sv(key), "payload": sv(e.Payload), "createdAt": nv(timeN(now)),
				"attempts": nv(0), "nextAttemptAt": nv(timeN(now)), "pending": sv("1"),
			},
			ConditionExpression: aws.String("attribute_not_exists(id)"),
		})
		if err != nil && !isConditionFailed(err) {
			return fmt.Errorf("copy outbox entry %s: %w", e.IdempotencyKey, err)
		}
	}
	_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.Subscribers), Key: map[string]types.AttributeValue{"customerIdentifier": sv(key)},
		UpdateExpression:          aws.String("REMOVE #ob, #obp"),
		ConditionExpression:       aws.String("#obs = :seq"),
		ExpressionAttributeNames:  map[string]string{"#ob": "pendingOutbox", "#obp": "outboxPending", "#obs": "outboxSeq"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":seq": out.Item["outboxSeq"]},
	})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("clear outbox of %s: %w", key, err)
	}
	return nil
}

// flushAllOutboxes copies the pending changes of every subscriber that has
// some (after a crash between a save and its copy).
func (s *Store) flushAllOutboxes(ctx context.Context) error {
	keys, err := s.queryKeys(ctx, s.tables.Subscribers, indexOutbox, "outboxPending", "1", "customerIdentifier")
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.flushOutbox(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// AddEvent stores e unless its ID is already stored.
func (s *Store) AddEvent(ctx context.Context, e mpsaas.Event) (bool, error) {
	item := map[string]types.AttributeValue{
		"id": sv(e.ID), "kind": sv(string(e.Kind)), "source": sv(e.Source),
		"eventTime": nv(timeN(e.Time)), "receivedAt": nv(timeN(e.ReceivedAt)),
	}
	putS(item, "customerIdentifier", e.CustomerIdentifier)
	putS(item, "awsAccountId", e.CustomerAWSAccountID)
	putS(item, "licenseId", e.LicenseID)
	putS(item, "agreementId", e.AgreementID)
	putS(item, "productCode", e.ProductCode)
	putS(item, "offerId", e.OfferID)
	putS(item, "agreementStatus", e.AgreementStatus)
	putS(item, "raw", e.Raw) // at most 256 KB: the message limit
	if e.FreeTrial != nil {
		item["freeTrial"] = bv(*e.FreeTrial)
	}
	_, err := s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.Events), Item: item,
		ConditionExpression: aws.String("attribute_not_exists(id)")})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("add event %s: %w", e.ID, err)
	}
	return true, nil
}

func eventFrom(item map[string]types.AttributeValue) mpsaas.Event {
	e := mpsaas.Event{
		ID: getS(item, "id"), Kind: mpsaas.EventKind(getS(item, "kind")), Source: getS(item, "source"),
		Time: fromN(getN(item, "eventTime")), ReceivedAt: fromN(getN(item, "receivedAt")),
		Identity: mpsaas.Identity{
			CustomerIdentifier: getS(item, "customerIdentifier"), CustomerAWSAccountID: getS(item, "awsAccountId"),
			LicenseID: getS(item, "licenseId"), AgreementID: getS(item, "agreementId"), ProductCode: getS(item, "productCode"),
		},
		OfferID: getS(item, "offerId"), AgreementStatus: getS(item, "agreementStatus"), Raw: getS(item, "raw"),
	}
	if v, ok := item["freeTrial"].(*types.AttributeValueMemberBOOL); ok {
		b := v.Value
		e.FreeTrial = &b
	}
	return e
}

// queryItems returns every item of an index with attr = value.
func (s *Store) queryItems(ctx context.Context, table, index, attr, value string) ([]map[string]types.AttributeValue, error) {
	p := ddb.NewQueryPaginator(s.client, &ddb.QueryInput{
		TableName: aws.String(table), IndexName: aws.String(index),
		KeyConditionExpression:    aws.String("#a = :v"),
		ExpressionAttributeNames:  map[string]string{"#a": attr},
		ExpressionAttributeValues: map[string]types.AttributeValue{":v": sv(value)},
	})
	var out []map[string]types.AttributeValue
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("query %s.%s: %w", table, index, err)
		}
		out = append(out, page.Items...)
	}
	return out, nil
}

func (s *Store) queryKeys(ctx context.Context, table, index, attr, value, keyAttr string) ([]string, error) {
	items, err := s.queryItems(ctx, table, index, attr, value)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(items))
	for _, it := range items {
		keys = append(keys, getS(it, keyAttr))
	}
	return keys, nil
}

// EventsFor returns the events of an identity, including those of agreements
// linked to its license by a license event.
func (s *Store) EventsFor(ctx context.Context, id mpsaas.Identity) ([]mpsaas.Event, error) {
	byID := map[string]mpsaas.Event{}
	add := func(items []map[string]types.AttributeValue) {
		for _, it := range items {
			e := eventFrom(it)
			byID[e.ID] = e
		}
	}
	if id.CustomerIdentifier != "" {
		items, err := s.queryItems(ctx, s.tables.Events, indexCI, "customerIdentifier", id.CustomerIdentifier)
		if err != nil {
			return nil, err
		}
		add(items)
	}
	if id.LicenseID != "" {
		items, err := s.queryItems(ctx, s.tables.Events, indexLicense, "licenseId", id.LicenseID)
		if err != nil {
			return nil, err
		}
		add(items)
		agreements := map[string]bool{}
		for _, it := range items {
			if a := getS(it, "agreementId"); a != "" {
				agreements[a] = true
			}
		}
		for a := range agreements {
			items, err := s.queryItems(ctx, s.tables.Events, indexAgreement, "agreementId", a)
			if err != nil {
				return nil, err
			}
			add(items)
		}
	}
	out := make([]mpsaas.Event, 0, len(byID))
	for _, e := range byID {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// SubscribersFor returns the keys of the subscribers an event belongs to.
func (s *Store) SubscribersFor(ctx context.Context, e mpsaas.Event) ([]string, error) {
	keys := map[string]bool{}
	if e.CustomerIdentifier != "" {
		_, err := s.GetSubscriber(ctx, e.CustomerIdentifier)
		switch mpsaas.ErrorCode(err) {
		case "":
			keys[e.CustomerIdentifier] = true
		case mpsaas.ENOTFOUND:
		default:
			return nil, err
		}
	}
	licenses := map[string]bool{}
	if e.LicenseID != "" {
		licenses[e.LicenseID] = true
	}
	if e.AgreementID != "" {
		items, err := s.queryItems(ctx, s.tables.Events, indexAgreement, "agreementId", e.AgreementID)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if l := getS(it, "licenseId"); l != "" {
				licenses[l] = true
			}
		}
	}
	for l := range licenses {
		ks, err := s.queryKeys(ctx, s.tables.Subscribers, indexLicense, "licenseId", l, "customerIdentifier")
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			keys[k] = true
		}
	}
	out := make([]string, 0, len(keys))
	for k := range keys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// EndingSubscribers returns the buyers whose subscription is ending or
// ended and whose last event is at or after since, from the sparse ending
// index (only such buyers are in it): the meter's flushing no longer scans
// every buyer on every run. Its partition key has one value, but it is
// written only when a buyer's status changes to or within those states.
func (s *Store) EndingSubscribers(ctx context.Context, since time.Time) ([]*mpsaas.Subscriber, error) {
	p := ddb.NewQueryPaginator(s.client, &ddb.QueryInput{
		TableName: aws.String(s.tables.Subscribers), IndexName: aws.String(indexEnding),
		KeyConditionExpression:    aws.String("ending = :one AND lastEventAt >= :since"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":one": sv("1"), ":since": nv(timeN(since))},
	})
	var out []*mpsaas.Subscriber
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("ending subscribers: %w", err)
		}
		for _, it := range page.Items {
			sub, err := subscriberFrom(it)
			if err != nil {
				return nil, err
			}
			out = append(out, sub)
		}
	}
	return out, nil
}
